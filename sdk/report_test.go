package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgflow-go/pgflow/sdk"
)

// TestConcurrencyIsACap drains a fanout of quick tasks, where reports and
// claims go together, and checks that no more handlers than Concurrency
// ever run at once.
func TestConcurrencyIsACap(t *testing.T) {
	t.Parallel()
	const limit, n = 3, 300
	e := newEnv(t)
	flow := sdk.NewFlow[[]int, struct {
		Each []int `json:"each"`
	}](sdk.FlowSpec{Slug: "capped", Steps: []sdk.StepSpec{{Slug: "each", Fanout: true}}})
	var running, most atomic.Int32
	e.startWorker(sdk.WorkerOptions{Concurrency: limit}, func(w *sdk.Worker) {
		sdk.HandleFanout(w, flow, "each", func(ctx context.Context, i int) (int, error) {
			now := running.Add(1)
			defer running.Add(-1)
			for {
				m := most.Load()
				if now <= m || most.CompareAndSwap(m, now) {
					break
				}
			}
			time.Sleep(time.Millisecond) // long enough for the others to overlap
			return i, nil
		})
	})
	items := sequence(n)
	out := runToEnd(e, flow, items, 60*time.Second)
	if len(out.Each) != n {
		t.Fatalf("%d outputs, want %d", len(out.Each), n)
	}
	if m := most.Load(); m > limit || m < 1 {
		t.Fatalf("at most %d handlers ran at once, want between 1 and %d", m, limit)
	}
}

// TestRejectedOutputAmongOthers reports a batch in which Postgres refuses
// one output (a number beyond what jsonb stores): that task alone fails,
// naming the refusal; no other task fails or runs again.
func TestRejectedOutputAmongOthers(t *testing.T) {
	t.Parallel()
	const n, bad = 40, 7
	e := newEnv(t)
	flow := sdk.NewFlow[[]int, struct {
		Each []json.RawMessage `json:"each"`
	}](sdk.FlowSpec{Slug: "refused", Steps: []sdk.StepSpec{{Slug: "each", Fanout: true}}})
	release := make(chan struct{})
	var started atomic.Int32
	e.startWorker(sdk.WorkerOptions{Concurrency: n}, func(w *sdk.Worker) {
		sdk.HandleFanout(w, flow, "each", func(ctx context.Context, i int) (json.RawMessage, error) {
			// Hold every handler until all have started, so that the
			// results are reported together.
			if started.Add(1) == n {
				close(release)
			}
			<-release
			if i == bad {
				return json.RawMessage(`1e1000000`), nil
			}
			return json.RawMessage(`1`), nil
		})
	})
	items := sequence(n)
	run := startRun(e, flow, items)
	_, err := run.Wait(e.waitCtx(60 * time.Second))
	var runErr *sdk.RunError
	if !errors.As(err, &runErr) {
		t.Fatalf("got %v, want a *RunError", err)
	}
	if runErr.Step != "each" || runErr.TaskIndex != bad || !strings.Contains(runErr.Message, "the database rejected the output") {
		t.Fatalf("run error %+v", runErr)
	}
	// The run ends with the refused task; the others, reported before or
	// after it, are completed or cancelled, never failed or run twice.
	rows, err := e.pool.Query(e.ctx, `SELECT task_index, status, attempt FROM pgflow.step_tasks WHERE run_id = $1`,
		run.ID().String())
	if err != nil {
		t.Fatal(err)
	}
	var (
		index, attempt int
		status         string
	)
	seen := 0
	_, err = pgx.ForEachRow(rows, []any{&index, &status, &attempt}, func() error {
		seen++
		switch {
		case attempt != 1:
			t.Errorf("task %d: attempt %d, want 1", index, attempt)
		case index == bad && status != "failed":
			t.Errorf("task %d: %s, want failed", index, status)
		case index != bad && status != "completed" && status != "cancelled":
			t.Errorf("task %d: %s, want completed or cancelled", index, status)
		}
		return nil
	})
	if err != nil || seen != n {
		t.Fatalf("%d tasks read, want %d: %v", seen, n, err)
	}
}

// TestReporters drains many small runs and a fanout with one, two and
// several reporters: every run completes with its outputs, and every
// handler runs exactly once.
func TestReporters(t *testing.T) {
	t.Parallel()
	for _, reporters := range []int{1, 2, 5} {
		t.Run(fmt.Sprint(reporters), func(t *testing.T) {
			t.Parallel()
			const runs, width = 200, 300
			e := newEnv(t)
			type chainOut struct {
				Second int `json:"second"`
			}
			chain := sdk.NewFlow[int, chainOut](sdk.FlowSpec{Slug: "reported_chain", Steps: []sdk.StepSpec{
				{Slug: "first"}, {Slug: "second", Deps: []string{"first"}}}})
			fanout := sdk.NewFlow[[]int, struct {
				Each []int `json:"each"`
			}](sdk.FlowSpec{Slug: "reported_fanout", Steps: []sdk.StepSpec{{Slug: "each", Fanout: true}}})
			var calls sync.Map // "run/step/index" -> *atomic.Int32
			count := func(ctx context.Context) {
				task, _ := sdk.TaskFromContext(ctx)
				n, _ := calls.LoadOrStore(fmt.Sprintf("%s/%s/%d", task.RunID, task.Step, task.Index), new(atomic.Int32))
				n.(*atomic.Int32).Add(1)
			}
			e.startWorker(sdk.WorkerOptions{Concurrency: 32, Reporters: reporters}, func(w *sdk.Worker) {
				sdk.HandleStep(w, chain, "first", func(ctx context.Context, in int, _ struct{}) (int, error) {
					count(ctx)
					return in + 1, nil
				})
				sdk.HandleStep(w, chain, "second", func(ctx context.Context, _ int, deps struct {
					First int `json:"first"`
				}) (int, error) {
					count(ctx)
					return deps.First * 2, nil
				})
				sdk.HandleFanout(w, fanout, "each", func(ctx context.Context, i int) (int, error) {
					count(ctx)
					return -i, nil
				})
			})
			items := sequence(width)
			big := startRun(e, fanout, items)
			started := make([]*sdk.Run[chainOut], runs)
			for i := range started {
				started[i] = startRun(e, chain, i)
			}
			for i, run := range started {
				out, err := run.Wait(e.waitCtx(60 * time.Second))
				if err != nil {
					t.Fatal(err)
				}
				if out.Second != (i+1)*2 {
					t.Fatalf("run %d: second = %d, want %d", i, out.Second, (i+1)*2)
				}
			}
			out, err := big.Wait(e.waitCtx(60 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range out.Each {
				if v != -i {
					t.Fatalf("each[%d] = %d, want %d", i, v, -i)
				}
			}
			handled := 0
			calls.Range(func(key, n any) bool {
				handled++
				if got := n.(*atomic.Int32).Load(); got != 1 {
					t.Errorf("%s ran %d times, want once", key, got)
				}
				return true
			})
			if want := 2*runs + width; handled != want {
				t.Fatalf("%d tasks handled, want %d", handled, want)
			}
		})
	}
}

// TestShutdownWaitsForAReportsClaim stops a worker while a report, and the
// claim that goes with it, is in flight: the report of step "a" claims the
// task of step "b" it has just queued, and that task runs to its end during
// the shutdown instead of starting with a cancelled context (a failed
// attempt, and with one attempt allowed, a failed run).
func TestShutdownWaitsForAReportsClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	type out struct {
		B int `json:"b"`
	}
	flow := sdk.NewFlow[int, out](sdk.FlowSpec{Slug: "shutdown_claim", MaxAttempts: 1, Steps: []sdk.StepSpec{
		{Slug: "a"}, {Slug: "b", Deps: []string{"a"}}}})

	tracer := &holdFirstReport{entered: make(chan struct{}), release: make(chan struct{})}
	pool := e.tracedPool(tracer)

	stopping := make(chan struct{})
	logger := slog.New(&onMessage{message: "pgflow: worker stopping", seen: stopping})
	w := sdk.NewWorker(pool, sdk.WorkerOptions{Concurrency: 2, Logger: logger})
	sdk.HandleStep(w, flow, "a", func(ctx context.Context, in int, _ struct{}) (int, error) {
		return in + 1, ctx.Err()
	})
	sdk.HandleStep(w, flow, "b", func(ctx context.Context, _ int, deps struct {
		A int `json:"a"`
	}) (int, error) {
		return deps.A * 10, ctx.Err()
	})
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	run := startRun(e, flow, 4)
	// The report of "a" (with its claim) is held until the worker stops.
	select {
	case <-tracer.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no report was sent")
	}
	cancel()
	select {
	case <-stopping:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not start stopping")
	}
	close(tracer.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}

	got, err := run.Wait(e.waitCtx(10 * time.Second))
	if err != nil {
		t.Fatalf("the run did not complete during the shutdown: %v", err)
	}
	if got.B != 50 {
		t.Fatalf("b = %d, want 50", got.B)
	}
}

// holdFirstReport holds the first report with a claim a pool sends (a
// complete_and_claim statement) until release is closed.
type holdFirstReport struct {
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (h *holdFirstReport) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.Contains(data.SQL, "pgflow.complete_and_claim(") {
		h.once.Do(func() {
			close(h.entered)
			<-h.release
		})
	}
	return ctx
}
func (h *holdFirstReport) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// onMessage is a slog handler that closes seen when a record with the
// given message is logged.
type onMessage struct {
	message string
	seen    chan struct{}
	once    sync.Once
}

func (h *onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h *onMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.message {
		h.once.Do(func() { close(h.seen) })
	}
	return nil
}
func (h *onMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *onMessage) WithGroup(string) slog.Handler      { return h }

// TestShutdownTimeoutDoesNotBoundClaims runs a worker whose shutdown
// timeout is far shorter than a claim: claims are bounded by it only once
// the worker stops, so the fanout drains without a failed claim (a claim
// given up after it committed would leave its tasks leased, unworked).
func TestShutdownTimeoutDoesNotBoundClaims(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := sdk.NewFlow[[]int, struct {
		Each []int `json:"each"`
	}](sdk.FlowSpec{Slug: "short_shutdown", Steps: []sdk.StepSpec{{Slug: "each", Fanout: true}}})
	failed := make(chan struct{})
	logger := slog.New(&onMessage{message: "pgflow: claiming tasks failed; retrying", seen: failed})
	e.startWorker(sdk.WorkerOptions{Concurrency: 8, ShutdownTimeout: time.Microsecond, Logger: logger}, func(w *sdk.Worker) {
		sdk.HandleFanout(w, flow, "each", func(ctx context.Context, i int) (int, error) { return i, nil })
	})
	items := sequence(200)
	out := runToEnd(e, flow, items, 60*time.Second)
	if len(out.Each) != len(items) {
		t.Fatalf("%d outputs, want %d", len(out.Each), len(items))
	}
	select {
	case <-failed:
		t.Fatal("a claim failed")
	default:
	}
}
