// Package faults runs the engine through process kills, database
// restarts, racing workers and oversized data, with real worker processes
// against a throwaway PostgreSQL, and checks the database afterwards.
//
// make test runs a short version; make chaos (PGFLOW_FAULTS_LONG=1) the long one.
package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/sdk"
	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

func TestMain(m *testing.M) {
	if os.Getenv("FAULTS_WORKER") == "1" {
		os.Exit(workerMain())
	}
	os.Exit(m.Run())
}

// long reports whether the long version runs (make chaos).
func long() bool { return os.Getenv("PGFLOW_FAULTS_LONG") != "" }

// pick returns the short or the long value.
func pick[T any](short, longValue T) T {
	if long() {
		return longValue
	}
	return short
}

// cluster is one scenario's database and worker processes.
type cluster struct {
	t      *testing.T
	ctx    context.Context
	srv    *throwawaypg.Server
	pool   *pgxpool.Pool
	client *sdk.Client
	dir    string

	mu    sync.Mutex
	procs []*proc
	seq   int
	// timeout is the step timeout of the last worker started: the flow
	// is synced with it, so that starting a run cannot undo what the
	// worker set (both sync the flow's options; the last one wins).
	timeout time.Duration
}

// proc is a worker process.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func newCluster(t *testing.T, timeout time.Duration) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	srv, err := throwawaypg.New(ctx, throwawaypg.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, ctx: ctx, srv: srv, dir: t.TempDir()}
	t.Cleanup(func() {
		c.stopAll()
		if t.Failed() {
			t.Logf("server log: %s", tail(srv.LogPath(), 30))
		}
		_ = srv.Close()
	})
	pool, err := pgxpool.New(ctx, srv.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	c.pool = pool
	if err := sdk.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	c.exec(`CREATE TABLE fault_effects (run_id uuid, idx int, attempt int, pid int, at timestamptz DEFAULT clock_timestamp())`)
	c.client = sdk.NewClient(pool, sdk.WithClientLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	t.Cleanup(c.client.Close)
	return c
}

func (c *cluster) exec(sql string, args ...any) {
	c.t.Helper()
	if _, err := c.pool.Exec(c.ctx, sql, args...); err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
}

// config returns a worker configuration for this cluster.
func (c *cluster) config() workerConfig {
	return workerConfig{
		DatabaseURL: c.srv.ConnString(), Concurrency: 16, Delay: 20 * time.Millisecond,
		Timeout: 2 * time.Second, LeaseGrace: time.Second, ShutdownTimeout: 10 * time.Second,
		MaxOutputBytes: 64 << 20, IgnoreContextFor: 0, IgnoreContext: map[int]bool{},
	}
}

// startWorker starts a worker process.
func (c *cluster) startWorker(cfg workerConfig) *proc {
	c.t.Helper()
	c.mu.Lock()
	c.seq++
	c.timeout = cfg.Timeout
	logPath := filepath.Join(c.dir, fmt.Sprintf("worker-%d.log", c.seq))
	c.mu.Unlock()
	logFile, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), cfg.env()...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// signal sends sig to a worker and, for SIGKILL or when wait is set, waits
// for it to exit.
func (p *proc) signal(t *testing.T, sig syscall.Signal, wait time.Duration) {
	t.Helper()
	_ = p.cmd.Process.Signal(sig)
	if wait > 0 {
		select {
		case <-p.done:
		case <-time.After(wait):
			t.Fatalf("worker %d did not exit within %s of %s", p.pid(), wait, sig)
		}
	}
}

// workerID reads the worker's id from its log, waiting for the line.
func (p *proc) workerID(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if m := workerIDPattern.FindStringSubmatch(p.logText()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d logged no worker id within a minute:\n%s", p.pid(), p.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var workerIDPattern = regexp.MustCompile(`worker started" worker_id=([0-9a-f-]{36})`)

// heldBy lists the elements of a run whose current attempt a worker holds.
func (c *cluster) heldBy(run sdk.RunID, workerID string) []int {
	rows, err := c.pool.Query(c.ctx, "SELECT task_index FROM pgflow.step_tasks WHERE run_id = $1 AND worker_id = $2 AND status = 'started'",
		[16]byte(run), workerID)
	if err != nil {
		c.t.Fatal(err)
	}
	idx, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		c.t.Fatal(err)
	}
	return idx
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func (c *cluster) stopAll() {
	c.mu.Lock()
	procs := append([]*proc(nil), c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func (c *cluster) waitFor(what string, timeout time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || c.ctx.Err() != nil {
			c.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// done counts a run's completed tasks of a step.
func (c *cluster) completed(run sdk.RunID, step string) int {
	var n int
	err := c.pool.QueryRow(c.ctx, "SELECT count(*) FROM pgflow.step_tasks WHERE run_id = $1 AND step_slug = $2 AND status = 'completed'",
		[16]byte(run), step).Scan(&n)
	if err != nil {
		return -1
	}
	return n
}

// startFanout starts a run of the faults flow over n elements.
func (c *cluster) startFanout(n int) sdk.RunID {
	c.t.Helper()
	items := make([]int, n)
	for i := range items {
		items[i] = i
	}
	raw, _ := json.Marshal(items)
	c.mu.Lock()
	timeout := c.timeout
	c.mu.Unlock()
	if timeout == 0 {
		timeout = c.config().Timeout
	}
	if err := c.client.EnsureFlows(c.ctx, fanoutSpec(timeout)); err != nil {
		c.t.Fatal(err)
	}
	id, err := c.client.StartFlow(c.ctx, "faults", raw)
	if err != nil {
		c.t.Fatal(err)
	}
	return id
}

// wait waits for a run's output.
func (c *cluster) wait(id sdk.RunID, timeout time.Duration) json.RawMessage {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	out, err := c.client.WaitRun(ctx, id)
	if err != nil {
		c.t.Fatalf("run %s: %v", id, err)
	}
	return out
}

// checkFanout checks a completed fanout run: its output holds every
// element once, in order; every element's side effect happened; an element
// ran more than once only in attempts of killed workers (or in attempts
// listed in extra, e.g. handlers that ignored their context); and no task
// is left queued or running.
func (c *cluster) checkFanout(id sdk.RunID, out json.RawMessage, n int, killed map[int]bool, extra map[int]bool) (duplicates int) {
	c.t.Helper()
	var o struct {
		Each []element `json:"each"`
	}
	if err := json.Unmarshal(out, &o); err != nil {
		c.t.Fatalf("output: %v", err)
	}
	if len(o.Each) != n {
		c.t.Fatalf("output holds %d elements, want %d", len(o.Each), n)
	}
	for i, e := range o.Each {
		if e.Index != i {
			c.t.Fatalf("output element %d holds element %d", i, e.Index)
		}
	}
	rows, err := c.pool.Query(c.ctx, "SELECT idx, attempt, pid FROM fault_effects WHERE run_id = $1", [16]byte(id))
	if err != nil {
		c.t.Fatal(err)
	}
	type effect struct{ attempt, pid int }
	effects := map[int][]effect{}
	var idx, attempt, pid int
	_, err = pgx.ForEachRow(rows, []any{&idx, &attempt, &pid}, func() error {
		effects[idx] = append(effects[idx], effect{attempt, pid})
		return nil
	})
	if err != nil {
		c.t.Fatal(err)
	}
	for i := range n {
		seen := map[int]bool{}
		final := false
		for _, e := range effects[i] {
			if seen[e.attempt] {
				c.t.Fatalf("element %d: attempt %d ran twice", i, e.attempt)
			}
			seen[e.attempt] = true
			switch {
			case e.attempt == o.Each[i].Attempt:
				final = true
			case killed[e.pid] || extra[i]:
				duplicates++
			default:
				c.t.Fatalf("element %d: attempt %d (worker %d, not killed) ran besides the reported attempt %d",
					i, e.attempt, e.pid, o.Each[i].Attempt)
			}
		}
		if !final {
			c.t.Fatalf("element %d: the reported attempt %d left no side effect", i, o.Each[i].Attempt)
		}
	}
	var live int
	if err := c.pool.QueryRow(c.ctx, "SELECT count(*) FROM pgflow.step_tasks WHERE status IN ('queued', 'started')").Scan(&live); err != nil || live != 0 {
		c.t.Fatalf("%d tasks left queued or running (%v)", live, err)
	}
	return duplicates
}

// tail returns the last lines of a file.
func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
