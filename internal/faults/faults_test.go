package faults

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgflow-go/pgflow/sdk"
)

// 1. Worker SIGKILL mid-task: three workers on a fanout with handlers that
// take a while; one of them is killed (kill -9) at random moments, several
// times, and replaced. The run completes; killed attempts are retried after
// their leases expire; an element runs more than once only in attempts of
// killed workers, and the output holds each element exactly once, in order.
func TestWorkerKilledMidTask(t *testing.T) {
	t.Parallel()
	n, kills := pick(400, 2000), pick(2, 6)
	c := newCluster(t, 10*time.Minute)
	cfg := c.config()
	cfg.Delay = pick(20*time.Millisecond, 50*time.Millisecond)
	cfg.Timeout, cfg.LeaseGrace = 2*time.Second, time.Second
	workers := []*proc{c.startWorker(cfg), c.startWorker(cfg), c.startWorker(cfg)}
	id := c.startFanout(n)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	killed := map[int]bool{}
	held := map[int]bool{} // elements whose attempt died with a worker
	for k := range kills {
		// Kill, after a random amount of progress that leaves work to do,
		// a worker that holds tasks at that moment.
		slot := n / (kills + 2)
		target := (k+1)*slot + rng.IntN(slot/2)
		c.waitFor("progress before a kill", 2*time.Minute, func() bool { return c.completed(id, "each") >= target })
		var i int
		c.waitFor("a worker holding tasks", time.Minute, func() bool {
			var busy []int
			for j, w := range workers {
				if len(c.heldBy(id, w.workerID(t))) > 0 {
					busy = append(busy, j)
				}
			}
			if len(busy) == 0 {
				return false
			}
			i = busy[rng.IntN(len(busy))]
			return true
		})
		victim, pid := workers[i].workerID(t), workers[i].pid()
		killed[pid] = true
		workers[i].signal(t, syscall.SIGKILL, 10*time.Second)
		// A report the worker sent just before dying may still commit:
		// see what it held once its sessions have gone.
		c.waitFor("the killed worker's sessions to end", time.Minute, func() bool {
			var sessions int
			err := c.pool.QueryRow(c.ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
				workerAppName(pid)).Scan(&sessions)
			return err == nil && sessions == 0
		})
		for _, idx := range c.heldBy(id, victim) {
			held[idx] = true
		}
		workers[i] = c.startWorker(cfg)
	}
	out := c.wait(id, 5*time.Minute)
	dups := c.checkFanout(id, out, n, killed, nil)

	// Every attempt that died with its worker was taken over once its
	// lease expired, and counted as a timeout.
	if len(held) == 0 {
		t.Fatal("the killed workers held no task when they died")
	}
	rows, err := c.pool.Query(c.ctx, "SELECT task_index, attempt, coalesce(error_message, '') FROM pgflow.step_tasks WHERE run_id = $1",
		[16]byte(id))
	if err != nil {
		t.Fatal(err)
	}
	var (
		idx, attempt int
		message      string
		timeouts     int
	)
	if _, err := pgx.ForEachRow(rows, []any{&idx, &attempt, &message}, func() error {
		timedOut := strings.HasPrefix(message, "timeout")
		if timedOut {
			timeouts++
		}
		if held[idx] && (!timedOut || attempt < 2) {
			t.Errorf("element %d died with a killed worker, yet has attempt %d and message %q", idx, attempt, message)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d elements, 3 workers, %d killed with SIGKILL holding %d tasks; %d attempts retried after lease expiry; %d side effects repeated, all by killed attempts",
		n, kills, len(held), timeouts, dups)
}

// 2. Postgres restart mid-run (fast shutdown, start on the same port):
// workers and a waiting client reconnect with backoff; the run completes
// and nothing is lost or repeated.
func TestPostgresRestartMidRun(t *testing.T) {
	t.Parallel()
	n, restarts := pick(400, 2000), pick(1, 3)
	c := newCluster(t, 10*time.Minute)
	cfg := c.config()
	cfg.Timeout = time.Minute // leases outlive the outages: nothing is taken over
	workers := []*proc{c.startWorker(cfg), c.startWorker(cfg)}
	id := c.startFanout(n)
	waited := make(chan json.RawMessage, 1)
	go func() {
		out, err := c.client.WaitRun(c.ctx, id)
		if err != nil {
			t.Errorf("wait: %v", err)
		}
		waited <- out
	}()
	for r := range restarts {
		target := (r + 1) * n / (restarts + 2)
		c.waitFor("progress before a restart", 2*time.Minute, func() bool { return c.completed(id, "each") >= target })
		if err := c.srv.Stop(c.ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.srv.Start(c.ctx); err != nil {
			t.Fatal(err)
		}
	}
	var out json.RawMessage
	select {
	case out = <-waited:
	case <-time.After(5 * time.Minute):
		t.Fatal("the waiting client did not see the run end")
	}
	if dups := c.checkFanout(id, out, n, nil, nil); dups != 0 {
		t.Fatalf("%d side effects repeated", dups)
	}
	reconnected := 0
	for _, w := range workers {
		if strings.Contains(w.logText(), "retrying") {
			reconnected++
		}
	}
	if reconnected == 0 {
		t.Error("no worker logged retrying through the restart")
	}
	t.Logf("%d elements, 2 workers and a waiting client through %d restarts; %d of 2 workers logged retries; nothing lost or repeated",
		n, restarts, reconnected)
}

// 3. Postgres unavailable at worker start: the worker retries with backoff,
// says why, and starts working when the server comes up.
func TestPostgresUnavailableAtWorkerStart(t *testing.T) {
	t.Parallel()
	n := pick(100, 500)
	c := newCluster(t, 5*time.Minute)
	cfg := c.config()
	id := c.startFanout(n)
	if err := c.srv.Stop(c.ctx); err != nil {
		t.Fatal(err)
	}
	w := c.startWorker(cfg)
	c.waitFor("the worker to say the database is unreachable", time.Minute, func() bool {
		return strings.Contains(w.logText(), "worker cannot reach the database; retrying")
	})
	if err := c.srv.Start(c.ctx); err != nil {
		t.Fatal(err)
	}
	out := c.wait(id, 3*time.Minute)
	if dups := c.checkFanout(id, out, n, nil, nil); dups != 0 {
		t.Fatalf("%d side effects repeated", dups)
	}
	t.Logf("worker started with the server down, logged %d retries, then drained %d elements",
		strings.Count(w.logText(), "cannot reach the database"), n)
}

// 4. Four worker processes racing a wide fanout: it completes, ordered and
// complete, and the server logs no deadlock.
func TestFourWorkersRaceAWideFanout(t *testing.T) {
	t.Parallel()
	n := pick(10000, 100000)
	c := newCluster(t, 20*time.Minute)
	cfg := c.config()
	cfg.Delay, cfg.Concurrency, cfg.Timeout = 0, 64, time.Minute
	for range 4 {
		c.startWorker(cfg)
	}
	start := time.Now()
	id := c.startFanout(n)
	out := c.wait(id, 15*time.Minute)
	elapsed := time.Since(start)
	if dups := c.checkFanout(id, out, n, nil, nil); dups != 0 {
		t.Fatalf("%d side effects repeated", dups)
	}
	log, err := os.ReadFile(c.srv.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), "deadlock detected") {
		t.Fatalf("the server logged a deadlock:\n%s", tail(c.srv.LogPath(), 40))
	}
	t.Logf("%d elements drained by 4 worker processes in %s; no deadlock in the server log", n, elapsed.Round(time.Millisecond))
}

// 5. Graceful shutdown under load: SIGTERM to a worker with 64 handlers
// running. With a long shutdown timeout its handlers finish; with a short
// one they are cancelled and their tasks released. Either way another
// worker finishes the run promptly, long before any lease (10 minutes)
// would expire, and no attempt counts as failed.
func TestGracefulShutdownUnderLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		shutdown time.Duration
		finished bool // whether the in-flight handlers finish before exit
	}{
		{"in-flight handlers finish", 30 * time.Second, true},
		{"in-flight tasks are released", 200 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, 5*time.Minute)
			cfg := c.config()
			cfg.Concurrency, cfg.Delay, cfg.Timeout, cfg.ShutdownTimeout = 64, 2*time.Second, 10*time.Minute, tc.shutdown
			first := c.startWorker(cfg)
			id := c.startFanout(200)
			var running int
			c.waitFor("64 handlers running", time.Minute, func() bool {
				_ = c.pool.QueryRow(c.ctx, "SELECT count(*) FROM pgflow.step_tasks WHERE status = 'started'").Scan(&running)
				return running == 64
			})
			stopped := time.Now()
			first.signal(t, syscall.SIGTERM, time.Minute)
			if first.err != nil {
				t.Fatalf("worker exited with %v:\n%s", first.err, first.logText())
			}
			released := strings.Contains(first.logText(), "releasing their tasks")
			if released == tc.finished {
				t.Fatalf("released: %v, want %v\n%s", released, !tc.finished, first.logText())
			}
			done := c.completed(id, "each")
			if tc.finished && done < 64 {
				t.Fatalf("%d tasks completed by the stopping worker, want its 64; its log:\n%s", done, first.logText())
			}
			cfg.Delay = 10 * time.Millisecond
			c.startWorker(cfg)
			out := c.wait(id, 2*time.Minute)
			if took := time.Since(stopped); took > time.Minute {
				t.Fatalf("the run finished %s after the SIGTERM: tasks waited for lease expiry", took)
			}
			if dups := c.checkFanout(id, out, 200, nil, nil); dups != 0 {
				t.Fatalf("%d side effects repeated", dups)
			}
			var failures int
			if err := c.pool.QueryRow(c.ctx, "SELECT coalesce(sum(failures), 0) FROM pgflow.step_tasks").Scan(&failures); err != nil || failures != 0 {
				t.Fatalf("%d failed attempts counted (%v)", failures, err)
			}
			t.Logf("SIGTERM with 64 handlers running (shutdown timeout %s): %d completed before exit, released %v; run done %s after the signal",
				tc.shutdown, done, released, time.Since(stopped).Round(time.Millisecond))
		})
	}
}

// 6. A handler that ignores its context past the timeout: its worker gives
// up on it, the attempt counts as a timeout, the task is retried (possibly
// elsewhere), and the old attempt's late result is fenced out.
func TestHandlerIgnoringItsContext(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 5*time.Minute)
	cfg := c.config()
	cfg.Timeout, cfg.LeaseGrace = time.Second, time.Second
	cfg.IgnoreContext, cfg.IgnoreContextFor = map[int]bool{3: true, 7: true}, 4*time.Second
	c.startWorker(cfg)
	c.startWorker(cfg)
	id := c.startFanout(20)
	out := c.wait(id, 2*time.Minute)
	c.checkFanout(id, out, 20, nil, cfg.IgnoreContext)
	var o struct {
		Each []element `json:"each"`
	}
	_ = json.Unmarshal(out, &o)
	for i := range cfg.IgnoreContext {
		if o.Each[i].Attempt < 2 {
			t.Errorf("element %d: the deaf first attempt's result was kept", i)
		}
		var msg string
		_ = c.pool.QueryRow(c.ctx, "SELECT error_message FROM pgflow.step_tasks WHERE run_id = $1 AND task_index = $2", [16]byte(id), i).Scan(&msg)
		if !strings.Contains(msg, "ignored the cancellation") {
			t.Errorf("element %d: recorded error %q", i, msg)
		}
	}
	// The deaf attempts still run to their end (Go cannot stop them): wait
	// for their side effects, then check the output did not change.
	c.waitFor("the deaf attempts to end", time.Minute, func() bool {
		var late int
		_ = c.pool.QueryRow(c.ctx, "SELECT count(*) FROM fault_effects WHERE run_id = $1 AND attempt = 1 AND idx IN (3, 7)", [16]byte(id)).Scan(&late)
		return late == 2
	})
	info, err := c.client.GetRun(c.ctx, id)
	if err != nil || string(info.Output) != string(out) {
		t.Fatalf("the output changed after the late results: %v", err)
	}
	t.Logf("2 of 20 elements had handlers deaf to their 1s timeout for 4s: both retried, their late results fenced out")
}

// 7. Large data: a 10 MB output, and a fanout over elements of 10 KB each;
// an output over the configured limit fails its attempt with a clear error.
func TestLargeData(t *testing.T) {
	t.Parallel()
	items := pick(1000, 10000)
	c := newCluster(t, 10*time.Minute)
	cfg := c.config()
	cfg.Timeout, cfg.MaxOutputBytes = 2*time.Minute, 120<<20
	c.startWorker(cfg)
	if err := c.client.EnsureFlows(c.ctx, largeSpec(cfg.Timeout)); err != nil {
		t.Fatal(err)
	}
	start := func(in largeInput) sdk.RunID {
		raw, _ := json.Marshal(in)
		id, err := c.client.StartFlow(c.ctx, "large", raw)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	id := start(largeInput{BigBytes: 10 << 20, Items: items, ItemBytes: 10 << 10})
	out := c.wait(id, 8*time.Minute)
	var o struct {
		Big  string `json:"big"`
		Wide []int  `json:"wide"`
	}
	if err := json.Unmarshal(out, &o); err != nil {
		t.Fatal(err)
	}
	if len(o.Big) != 10<<20 || len(o.Wide) != items {
		t.Fatalf("big is %d bytes, wide has %d elements", len(o.Big), len(o.Wide))
	}
	for i, size := range o.Wide {
		if size != 10<<10 {
			t.Fatalf("element %d is %d bytes", i, size)
		}
	}

	tooBig := start(largeInput{BigBytes: 130 << 20, Items: 1, ItemBytes: 1})
	ctx := c.ctx
	_, err := c.client.WaitRun(ctx, tooBig)
	var runErr *sdk.RunError
	if !errors.As(err, &runErr) || runErr.Step != "big" || !strings.Contains(runErr.Message, "over the limit of 125829120 (WorkerOptions.MaxOutputBytes)") {
		t.Fatalf("an output over the limit: %v", err)
	}
	var stored int64
	if err := c.pool.QueryRow(ctx, "SELECT coalesce(sum(pg_column_size(output)), 0) FROM pgflow.step_states WHERE run_id = $1", [16]byte(tooBig)).Scan(&stored); err != nil || stored > 1<<20 {
		t.Fatalf("%d bytes stored for the refused output (%v)", stored, err)
	}
	t.Logf("a 10 MB output and %d elements of 10 KB went through; a 130 MB output failed at the 120 MB limit: %s", items, runErr.Message)
}
