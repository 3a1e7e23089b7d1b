// Package bench measures the engine end to end: runs per second, fanout
// spawn and drain, chain latency and the worker's memory. The worker runs
// in a separate process (the benchmark binary itself, started with
// -worker), so that its peak RSS is its own.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/sdk"
)

// Config says what to measure and where.
type Config struct {
	// DatabaseURL is the database to use; it must have the pgflow schema
	// installed or installable.
	DatabaseURL string
	// Scenarios to run, in this order: "runs", "fanout", "chain-latency", "rss".
	Scenarios []string
	// Runs is the number of single-step runs of the runs scenario.
	Runs int
	// Widths are the fanout sizes of the fanout scenario.
	Widths []int
	// Chains is how many 3-step chains the latency scenario runs.
	Chains int
	// RSSWidth is the fanout drained while the worker's memory is measured.
	RSSWidth int
	// Worker configures the worker process.
	Worker WorkerConfig
	// WorkerCommand returns the command that starts a worker process
	// (RunWorker in a process of its own) for a database URL.
	WorkerCommand func(databaseURL string, wc WorkerConfig) *exec.Cmd
	// Log receives progress lines.
	Log io.Writer
	// DataDir is the server's data directory when the benchmark started the
	// server itself; its processes' CPU time is then reported too.
	DataDir string
}

// Result is one scenario's measurement; fields that do not apply are nil.
type Result struct {
	Scenario     string   `json:"scenario"`
	N            int      `json:"n"`
	Seconds      float64  `json:"seconds"`
	PerSecond    float64  `json:"per_second"`
	P50ms        *float64 `json:"p50_ms"`
	P99ms        *float64 `json:"p99_ms"`
	RSSMB        *float64 `json:"rss_mb"`
	WorkerCPU    *float64 `json:"worker_cpu_seconds,omitempty"` // user+system time of the worker process
	ServerCPU    *float64 `json:"server_cpu_seconds,omitempty"` // user+system time of the PostgreSQL processes
	SpawnSeconds *float64 `json:"spawn_seconds,omitempty"`
	// CostRatio is, for the widest fanout, the drain time per task divided
	// by that of the narrowest (1.0: perfectly linear).
	CostRatio *float64 `json:"cost_ratio,omitempty"`
}

// Run measures the configured scenarios and returns their results.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()
	if err := sdk.Migrate(ctx, pool); err != nil {
		return nil, err
	}
	if err := sdk.EnsureFlows(ctx, pool, allFlows...); err != nil {
		return nil, err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	client := sdk.NewClient(pool, sdk.WithClientLogger(quiet))
	defer client.Close()
	b := &runner{cfg: cfg, pool: pool, client: client}

	var results []Result
	for _, sc := range cfg.Scenarios {
		var rs []Result
		switch sc {
		case "runs":
			rs, err = b.runs(ctx)
		case "fanout":
			rs, err = b.fanout(ctx)
		case "chain-latency":
			rs, err = b.chainLatency(ctx)
		case "rss":
			rs, err = b.rss(ctx)
		default:
			err = fmt.Errorf("unknown scenario %q", sc)
		}
		if err != nil {
			return results, fmt.Errorf("scenario %s: %w", sc, err)
		}
		results = append(results, rs...)
	}
	return results, nil
}

type runner struct {
	cfg    Config
	pool   *pgxpool.Pool
	client *sdk.Client
}

// serverCPUSince returns the server's CPU seconds since mark (see
// serverCPU), or nil when they cannot be read. Read it while the worker
// still runs: the CPU time of backends that have exited is not counted.
func (b *runner) serverCPUSince(mark float64) *float64 {
	now := serverCPU(b.cfg.DataDir)
	if mark < 0 || now < 0 {
		return nil
	}
	d := now - mark
	return &d
}

func (b *runner) logf(format string, args ...any) {
	if b.cfg.Log != nil {
		fmt.Fprintf(b.cfg.Log, format+"\n", args...)
	}
}

// worker is a running worker process.
type worker struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startWorker starts a worker process and waits until it is working.
func (b *runner) startWorker(ctx context.Context) (*worker, error) {
	cmd := b.cfg.WorkerCommand(b.cfg.DatabaseURL, b.cfg.Worker)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	w := &worker{cmd: cmd, stdin: stdin}
	// The worker registers itself once its flows are synced.
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM pgflow.workers WHERE stopped_at IS NULL`).Scan(&n); err == nil && n > 0 {
			return w, nil
		}
		if time.Now().After(deadline) {
			_, _, _ = w.stop()
			return nil, errors.New("the worker process did not start within a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends a worker process gracefully and returns its peak RSS in MB
// and the CPU time it used. The peak is the process's own (VmHWM, read just
// before it stops): the resource usage the kernel reports after exit can
// hold the benchmark's own RSS at the moment it started the worker (a
// 100,000-item input built in this process showed as 35 MB more).
func (w *worker) stop() (rss, cpu float64, err error) {
	rss, ownPeak := peakRSS(w.cmd.Process.Pid)
	_ = w.stdin.Close()
	err = w.cmd.Wait()
	if ru, ok := w.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && !ownPeak {
		rss = float64(ru.Maxrss) / 1024 // kilobytes on Linux
	}
	cpu = (w.cmd.ProcessState.UserTime() + w.cmd.ProcessState.SystemTime()).Seconds()
	return rss, cpu, err
}

// runs starts single-step runs in batches of 1,000 while a worker drains
// them, and times the whole: first start to last completion.
func (b *runner) runs(ctx context.Context) ([]Result, error) {
	n := b.cfg.Runs
	w, err := b.startWorker(ctx)
	if err != nil {
		return nil, err
	}
	counter, err := newEndCounter(ctx, b.cfg.DatabaseURL)
	if err != nil {
		_, _, _ = w.stop()
		return nil, err
	}
	defer counter.close()
	b.logf("runs: starting %d single-step runs in batches of 1,000", n)
	cpuMark := serverCPU(b.cfg.DataDir)
	start := time.Now()
	for done := 0; done < n; {
		batch := min(1000, n-done)
		inputs := make([]json.RawMessage, batch)
		for i := range inputs {
			inputs[i] = json.RawMessage(`{"i":` + strconv.Itoa(done+i) + `}`)
		}
		if _, err := b.client.StartFlows(ctx, runsFlow.Slug, inputs); err != nil {
			_, _, _ = w.stop()
			return nil, err
		}
		done += batch
	}
	if err := counter.waitFor(ctx, n); err != nil {
		_, _, _ = w.stop()
		return nil, err
	}
	elapsed := time.Since(start)
	serverCPU := b.serverCPUSince(cpuMark)
	rss, cpu, err := w.stop()
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	return []Result{{Scenario: "runs", N: n, Seconds: elapsed.Seconds(), PerSecond: float64(n) / elapsed.Seconds(),
		RSSMB: &rss, WorkerCPU: &cpu, ServerCPU: serverCPU}}, nil
}

// fanout starts one run per width whose only step fans out over that many
// items, and measures the spawn (the start call) and the drain.
func (b *runner) fanout(ctx context.Context) ([]Result, error) {
	var results []Result
	var perTask []float64
	for _, width := range b.cfg.Widths {
		r, err := b.oneFanout(ctx, width)
		if err != nil {
			return nil, err
		}
		perTask = append(perTask, r.Seconds/float64(width))
		results = append(results, r)
	}
	if len(perTask) > 1 {
		ratio := perTask[len(perTask)-1] / perTask[0]
		results[len(results)-1].CostRatio = &ratio
	}
	return results, nil
}

func (b *runner) oneFanout(ctx context.Context, width int) (Result, error) {
	w, err := b.startWorker(ctx)
	if err != nil {
		return Result{}, err
	}
	input := fanoutInput(width)
	b.logf("fanout: %d items", width)
	cpuMark := serverCPU(b.cfg.DataDir)
	start := time.Now()
	id, err := b.client.StartFlow(ctx, fanoutFlow.Slug, input)
	if err != nil {
		_, _, _ = w.stop()
		return Result{}, err
	}
	spawned := time.Since(start)
	if _, err := b.client.WaitRun(ctx, id); err != nil {
		_, _, _ = w.stop()
		return Result{}, err
	}
	drain := time.Since(start) - spawned
	serverCPU := b.serverCPUSince(cpuMark)
	rss, cpu, err := w.stop()
	if err != nil {
		return Result{}, fmt.Errorf("worker: %w", err)
	}
	spawnSeconds := spawned.Seconds()
	return Result{Scenario: "fanout", N: width, Seconds: drain.Seconds(), PerSecond: float64(width) / drain.Seconds(),
		SpawnSeconds: &spawnSeconds, RSSMB: &rss, WorkerCPU: &cpu, ServerCPU: serverCPU}, nil
}

// chainLatency starts 3-step chains one after another on an idle worker
// and measures start-to-result latency.
func (b *runner) chainLatency(ctx context.Context) ([]Result, error) {
	w, err := b.startWorker(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _, _, _ = w.stop() }()
	// Warm up connections and plans.
	for range 10 {
		if err := b.oneChain(ctx); err != nil {
			return nil, err
		}
	}
	b.logf("chain-latency: %d chains of 3 steps, one at a time", b.cfg.Chains)
	lat := make([]float64, 0, b.cfg.Chains)
	cpuMark := serverCPU(b.cfg.DataDir)
	start := time.Now()
	for range b.cfg.Chains {
		t0 := time.Now()
		if err := b.oneChain(ctx); err != nil {
			return nil, err
		}
		lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
	}
	elapsed := time.Since(start)
	serverCPU := b.serverCPUSince(cpuMark)
	slices.Sort(lat)
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	return []Result{{Scenario: "chain-latency", N: b.cfg.Chains, Seconds: elapsed.Seconds(),
		PerSecond: float64(b.cfg.Chains) / elapsed.Seconds(), P50ms: &p50, P99ms: &p99, ServerCPU: serverCPU}}, nil
}

func (b *runner) oneChain(ctx context.Context) error {
	id, err := b.client.StartFlow(ctx, chainFlow.Slug, json.RawMessage(`{}`))
	if err != nil {
		return err
	}
	_, err = b.client.WaitRun(ctx, id)
	return err
}

// rss drains a wide fanout with a fresh worker and reports its peak RSS.
func (b *runner) rss(ctx context.Context) ([]Result, error) {
	r, err := b.oneFanout(ctx, b.cfg.RSSWidth)
	if err != nil {
		return nil, err
	}
	r.Scenario = "rss"
	r.SpawnSeconds = nil
	return []Result{r}, nil
}

// percentile of sorted values (nearest rank).
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// endCounter counts ended runs from pgflow_runs notifications.
type endCounter struct {
	conn  *pgx.Conn
	ended int
}

func newEndCounter(ctx context.Context, url string) (*endCounter, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN pgflow_runs"); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	return &endCounter{conn: conn}, nil
}

func (c *endCounter) waitFor(ctx context.Context, n int) error {
	for c.ended < n {
		waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		note, err := c.conn.WaitForNotification(waitCtx)
		cancel()
		if err != nil {
			return fmt.Errorf("waiting for runs to end (%d of %d so far): %w", c.ended, n, err)
		}
		var p struct {
			Status string   `json:"status"`
			RunIDs []string `json:"run_ids"`
		}
		if err := json.Unmarshal([]byte(note.Payload), &p); err != nil {
			return err
		}
		if p.Status != "completed" {
			return fmt.Errorf("a run ended %s", p.Status)
		}
		c.ended += len(p.RunIDs)
	}
	return nil
}

func (c *endCounter) close() { _ = c.conn.Close(context.Background()) }
