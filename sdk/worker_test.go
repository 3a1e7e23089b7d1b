package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/pgflow-go/pgflow/sdk"
)

// The linear flow: double -> add -> describe.
type linearIn struct {
	N int `json:"n"`
}

type linearOut struct {
	Describe string `json:"describe"`
}

var linearFlow = sdk.NewFlow[linearIn, linearOut](sdk.FlowSpec{
	Slug: "linear",
	Steps: []sdk.StepSpec{
		{Slug: "double"},
		{Slug: "add", Deps: []string{"double"}},
		{Slug: "describe", Deps: []string{"add"}},
	},
})

func registerLinear(w *sdk.Worker) {
	sdk.HandleStep(w, linearFlow, "double", func(ctx context.Context, in linearIn, _ struct{}) (int, error) {
		return in.N * 2, nil
	})
	sdk.HandleStep(w, linearFlow, "add", func(ctx context.Context, in linearIn, deps struct {
		Double int `json:"double"`
	}) (int, error) {
		return deps.Double + in.N, nil
	})
	sdk.HandleStep(w, linearFlow, "describe", func(ctx context.Context, _ linearIn, deps struct {
		Add int `json:"add"`
	}) (string, error) {
		return fmt.Sprintf("sum %d", deps.Add), nil
	})
}

func TestTypedLinear(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker(sdk.WorkerOptions{Concurrency: 4}, registerLinear)
	run := startRun(e, linearFlow, linearIn{N: 7})
	out, err := run.Wait(e.waitCtx(30 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if out.Describe != "sum 21" {
		t.Fatalf("output %+v, want sum 21", out)
	}
	info, err := run.Get(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Status != sdk.RunCompleted || len(info.Steps) != 3 {
		t.Fatalf("run info %+v", info)
	}
	for _, s := range info.Steps {
		if s.Status != sdk.StepCompleted || s.CompletedTasks() != 1 {
			t.Errorf("step %s: %s, %d tasks completed", s.Slug, s.Status, s.CompletedTasks())
		}
	}
}

// The diamond flow: split -> (upper, length) -> join.
type diamondOut struct {
	Join string `json:"join"`
}

var diamondFlow = sdk.NewFlow[string, diamondOut](sdk.FlowSpec{
	Slug: "diamond",
	Steps: []sdk.StepSpec{
		{Slug: "split"},
		{Slug: "upper", Deps: []string{"split"}},
		{Slug: "length", Deps: []string{"split"}},
		{Slug: "join", Deps: []string{"upper", "length"}},
	},
})

func TestTypedDiamond(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker(sdk.WorkerOptions{Concurrency: 4}, func(w *sdk.Worker) {
		sdk.HandleStep(w, diamondFlow, "split", func(ctx context.Context, in string, _ struct{}) ([]string, error) {
			return strings.Fields(in), nil
		})
		sdk.HandleStep(w, diamondFlow, "upper", func(ctx context.Context, _ string, deps struct {
			Split []string `json:"split"`
		}) (string, error) {
			return strings.ToUpper(strings.Join(deps.Split, "-")), nil
		})
		sdk.HandleStep(w, diamondFlow, "length", func(ctx context.Context, _ string, deps struct {
			Split []string `json:"split"`
		}) (int, error) {
			return len(deps.Split), nil
		})
		sdk.HandleStep(w, diamondFlow, "join", func(ctx context.Context, _ string, deps struct {
			Upper  string `json:"upper"`
			Length int    `json:"length"`
		}) (string, error) {
			return fmt.Sprintf("%s/%d", deps.Upper, deps.Length), nil
		})
	})
	out := runToEnd(e, diamondFlow, "a b c", 30*time.Second)
	if out.Join != "A-B-C/3" {
		t.Fatalf("output %+v", out)
	}
}

// The fanout flow: items -> square (fanout) -> total.
type fanoutOut struct {
	Total int `json:"total"`
}

type square struct {
	Index  int `json:"index"`
	Square int `json:"square"`
}

var fanoutFlow = sdk.NewFlow[int, fanoutOut](sdk.FlowSpec{
	Slug: "fanout",
	Steps: []sdk.StepSpec{
		{Slug: "items"},
		{Slug: "square", Deps: []string{"items"}, Fanout: true},
		{Slug: "total", Deps: []string{"square"}},
	},
})

func registerFanout(w *sdk.Worker, calls *sync.Map) {
	sdk.HandleStep(w, fanoutFlow, "items", func(ctx context.Context, n int, _ struct{}) ([]int, error) {
		items := sequence(n)
		return items, nil
	})
	sdk.HandleFanout(w, fanoutFlow, "square", func(ctx context.Context, i int) (square, error) {
		if calls != nil {
			v, _ := calls.LoadOrStore(i, new(atomic.Int32))
			v.(*atomic.Int32).Add(1)
		}
		return square{Index: i, Square: i * i}, nil
	})
	sdk.HandleStep(w, fanoutFlow, "total", func(ctx context.Context, n int, deps struct {
		Square []square `json:"square"`
	}) (int, error) {
		for i, s := range deps.Square {
			if s.Index != i {
				return 0, sdk.Permanent(fmt.Errorf("element %d holds item %d: order lost", i, s.Index))
			}
		}
		total := 0
		for _, s := range deps.Square {
			total += s.Square
		}
		return total, nil
	})
}

func sumOfSquares(n int) int { return (n - 1) * n * (2*n - 1) / 6 }

func TestTypedFanout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker(sdk.WorkerOptions{Concurrency: 8}, func(w *sdk.Worker) { registerFanout(w, nil) })
	for _, n := range []int{0, 1, 50} {
		run := startRun(e, fanoutFlow, n)
		out, err := run.Wait(e.waitCtx(30 * time.Second))
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if out.Total != sumOfSquares(n) {
			t.Fatalf("n=%d: total %d, want %d", n, out.Total, sumOfSquares(n))
		}
	}
}

func TestTwoWorkersBigFanout(t *testing.T) {
	t.Parallel()
	const n = 5000
	e := newEnv(t)
	var calls sync.Map
	e.startWorker(sdk.WorkerOptions{Concurrency: 32}, func(w *sdk.Worker) { registerFanout(w, &calls) })
	e.startWorker(sdk.WorkerOptions{Concurrency: 32}, func(w *sdk.Worker) { registerFanout(w, &calls) })
	out := runToEnd(e, fanoutFlow, n, 90*time.Second)
	if out.Total != sumOfSquares(n) {
		t.Fatalf("total %d, want %d", out.Total, sumOfSquares(n))
	}
	for i := range n {
		v, ok := calls.Load(i)
		if !ok || v.(*atomic.Int32).Load() != 1 {
			t.Fatalf("item %d ran %v times", i, v)
		}
	}
}

func TestStartTx(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker(sdk.WorkerOptions{}, registerLinear)

	tx, err := e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	rolledBack, err := linearFlow.StartTx(e.ctx, e.client, tx, linearIn{N: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(e.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := rolledBack.Get(e.ctx); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("run of a rolled-back transaction: got %v, want ErrNotFound", err)
	}

	tx, err = e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	committed, err := linearFlow.StartTx(e.ctx, e.client, tx, linearIn{N: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	out, err := committed.Wait(e.waitCtx(30 * time.Second))
	if err != nil || out.Describe != "sum 6" {
		t.Fatalf("committed run: %+v, %v", out, err)
	}
}

// flakyFlow has one step whose handler is given by the test.
func flakyFlow(slug string, maxAttempts int, timeout time.Duration) *sdk.Flow[string, map[string]string] {
	return sdk.NewFlow[string, map[string]string](sdk.FlowSpec{
		Slug: slug, MaxAttempts: maxAttempts, BaseDelay: time.Millisecond, Timeout: timeout,
		Steps: []sdk.StepSpec{{Slug: "work"}},
	})
}

func TestHandlerErrorRetriesThenFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := flakyFlow("always_fails", 3, time.Minute)
	var attempts atomic.Int32
	e.startWorker(sdk.WorkerOptions{}, func(w *sdk.Worker) {
		sdk.HandleStep(w, flow, "work", func(ctx context.Context, in string, _ struct{}) (string, error) {
			n := attempts.Add(1)
			return "", fmt.Errorf("boom %d", n)
		})
	})
	run := startRun(e, flow, "x")
	_, err := run.Wait(e.waitCtx(30 * time.Second))
	var runErr *sdk.RunError
	if !errors.As(err, &runErr) || !errors.Is(err, sdk.ErrRunFailed) {
		t.Fatalf("got %v, want a *RunError matching ErrRunFailed", err)
	}
	if runErr.Step != "work" || runErr.TaskIndex != 0 || runErr.Message != "boom 3" || runErr.RunID != run.ID() {
		t.Fatalf("run error %+v", runErr)
	}
	if got := attempts.Load(); got != 3 {
		t.Fatalf("%d attempts, want 3", got)
	}
}

func TestPermanentErrorFailsAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := flakyFlow("permanent", 5, time.Minute)
	var attempts atomic.Int32
	e.startWorker(sdk.WorkerOptions{}, func(w *sdk.Worker) {
		sdk.HandleStep(w, flow, "work", func(ctx context.Context, in string, _ struct{}) (string, error) {
			attempts.Add(1)
			return "", sdk.Permanent(errors.New("input is unusable"))
		})
	})
	run := startRun(e, flow, "x")
	_, err := run.Wait(e.waitCtx(30 * time.Second))
	if !errors.Is(err, sdk.ErrRunFailed) || !strings.Contains(err.Error(), "input is unusable") {
		t.Fatalf("got %v", err)
	}
	if got := attempts.Load(); got != 1 {
		t.Fatalf("%d attempts, want 1", got)
	}
}

func TestPanicFailsTheAttempt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := flakyFlow("panics", 1, time.Minute)
	e.startWorker(sdk.WorkerOptions{}, func(w *sdk.Worker) {
		sdk.HandleStep(w, flow, "work", func(ctx context.Context, in string, _ struct{}) (string, error) {
			if in == "panic" {
				panic("handler exploded")
			}
			return "fine", nil
		})
	})
	run := startRun(e, flow, "panic")
	_, err := run.Wait(e.waitCtx(30 * time.Second))
	var runErr *sdk.RunError
	if !errors.As(err, &runErr) || !strings.Contains(runErr.Message, "panic: handler exploded") ||
		!strings.Contains(runErr.Message, "goroutine") {
		t.Fatalf("got %v, want the panic message with its stack", err)
	}
	// The worker keeps running.
	run = startRun(e, flow, "calm")
	out, err := run.Wait(e.waitCtx(30 * time.Second))
	if err != nil || out["work"] != "fine" {
		t.Fatalf("after the panic: %v, %v", out, err)
	}
}

func TestTimeoutRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := flakyFlow("slow", 2, 300*time.Millisecond)
	var attempts atomic.Int32
	sawDeadline := make(chan bool, 1)
	e.startWorker(sdk.WorkerOptions{LeaseGrace: 200 * time.Millisecond}, func(w *sdk.Worker) {
		sdk.HandleStep(w, flow, "work", func(ctx context.Context, in string, _ struct{}) (string, error) {
			if attempts.Add(1) == 1 {
				<-ctx.Done() // block past the timeout
				sawDeadline <- errors.Is(ctx.Err(), context.DeadlineExceeded)
				return "", ctx.Err()
			}
			return "second try", nil
		})
	})
	run := startRun(e, flow, "x")
	out, err := run.Wait(e.waitCtx(30 * time.Second))
	if err != nil || out["work"] != "second try" {
		t.Fatalf("got %v, %v", out, err)
	}
	if !<-sawDeadline {
		t.Fatal("the first attempt's context did not end with its deadline")
	}
	var msg string
	if err := e.pool.QueryRow(e.ctx, "SELECT error_message FROM pgflow.step_tasks WHERE run_id = $1", [16]byte(run.ID())).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(msg, "timeout: ") {
		t.Fatalf("first attempt recorded as %q, want a timeout", msg)
	}
}

func TestCancelRunCancelsHandlers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := flakyFlow("cancellable", 1, time.Minute)
	started := make(chan struct{})
	sawCancel := make(chan error, 1)
	e.startWorker(sdk.WorkerOptions{}, func(w *sdk.Worker) {
		sdk.HandleStep(w, flow, "work", func(ctx context.Context, in string, _ struct{}) (string, error) {
			close(started)
			<-ctx.Done()
			sawCancel <- ctx.Err()
			return "", ctx.Err()
		})
	})
	run := startRun(e, flow, "x")
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("handler did not start")
	}
	if ok, err := run.Cancel(e.ctx); err != nil || !ok {
		t.Fatalf("cancel: %v, %v", ok, err)
	}
	select {
	case err := <-sawCancel:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler context ended with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler's context was not cancelled")
	}
	if _, err := run.Wait(e.waitCtx(30 * time.Second)); !errors.Is(err, sdk.ErrRunCancelled) {
		t.Fatalf("wait: %v, want ErrRunCancelled", err)
	}
}

func TestGracefulShutdownReleasesTasks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// A long timeout: the run can only finish promptly if the first
	// worker hands its tasks back instead of letting the leases expire.
	flow := sdk.NewFlow[[]int, map[string][]int](sdk.FlowSpec{
		Slug: "shutdown", Timeout: 10 * time.Minute,
		Steps: []sdk.StepSpec{{Slug: "each", Fanout: true}},
	})
	var first atomic.Int32
	blocked := make(chan struct{}, 100)
	stubborn := e.startWorker(sdk.WorkerOptions{Concurrency: 4, ShutdownTimeout: 200 * time.Millisecond}, func(w *sdk.Worker) {
		sdk.HandleFanout(w, flow, "each", func(ctx context.Context, i int) (int, error) {
			first.Add(1)
			blocked <- struct{}{}
			<-ctx.Done() // never finishes on its own
			return 0, ctx.Err()
		})
	})
	run := startRun(e, flow, []int{1, 2, 3, 4, 5, 6})
	for range 4 {
		select {
		case <-blocked:
		case <-time.After(30 * time.Second):
			t.Fatal("the first worker did not take 4 tasks")
		}
	}
	if err := stubborn.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.startWorker(sdk.WorkerOptions{Concurrency: 4}, func(w *sdk.Worker) {
		sdk.HandleFanout(w, flow, "each", func(ctx context.Context, i int) (int, error) { return i * 10, nil })
	})
	out, err := run.Wait(e.waitCtx(30 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{10, 20, 30, 40, 50, 60}, out["each"]); diff != "" {
		t.Fatalf("output (-want +got):\n%s", diff)
	}
	var failures int
	if err := e.pool.QueryRow(e.ctx, "SELECT sum(failures)::int FROM pgflow.step_tasks WHERE run_id = $1", [16]byte(run.ID())).Scan(&failures); err != nil {
		t.Fatal(err)
	}
	if failures != 0 {
		t.Fatalf("released tasks counted %d failed attempts", failures)
	}
}

// TestSpoofedEndNotificationIsIgnored: anyone who can connect can NOTIFY;
// a worker checks with the database before cancelling handlers.
func TestSpoofedEndNotificationIsIgnored(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := flakyFlow("spoofed", 1, time.Minute)
	started := make(chan string, 2)
	release := make(chan struct{})
	ctxErr := make(chan error, 1)
	e.startWorker(sdk.WorkerOptions{}, func(w *sdk.Worker) {
		sdk.HandleStep(w, flow, "work", func(ctx context.Context, in string, _ struct{}) (string, error) {
			started <- in
			if in == "victim" {
				<-release
				ctxErr <- ctx.Err()
			}
			return in, nil
		})
	})
	victim, err := flow.Start(e.ctx, e.client, "victim")
	if err != nil {
		t.Fatal(err)
	}
	if got := <-started; got != "victim" {
		t.Fatalf("started %q", got)
	}
	payload := fmt.Sprintf(`{"status": "cancelled", "run_ids": [%q]}`, victim.ID())
	if _, err := e.pool.Exec(e.ctx, "SELECT pg_notify('pgflow_runs', $1)", payload); err != nil {
		t.Fatal(err)
	}
	// A second run's task notification arrives after the spoofed one on the
	// worker's listener: once its handler starts, the spoof was handled.
	if _, err := flow.Start(e.ctx, e.client, "marker"); err != nil {
		t.Fatal(err)
	}
	if got := <-started; got != "marker" {
		t.Fatalf("started %q", got)
	}
	close(release)
	if err := <-ctxErr; err != nil {
		t.Fatalf("the victim's context ended (%v) on a spoofed notification", err)
	}
	if out, err := victim.Wait(e.waitCtx(30 * time.Second)); err != nil || out["work"] != "victim" {
		t.Fatalf("victim: %v, %v", out, err)
	}
}

// A task delayed by its step's start delay is claimed when it becomes
// visible, not at the next poll, also right after the worker learned that
// nothing was pending (its claim loop reuses that answer for a while).
func TestStartDelayAfterAnIdleAnswer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	quick := sdk.FlowSpec{Slug: "quick_then_delayed_a", Steps: []sdk.StepSpec{{Slug: "only"}}}
	delayed := sdk.FlowSpec{Slug: "quick_then_delayed_b", Steps: []sdk.StepSpec{{Slug: "only", StartDelay: 200 * time.Millisecond}}}
	if err := e.client.EnsureFlows(e.ctx, quick, delayed); err != nil {
		t.Fatal(err)
	}
	const poll = time.Minute
	e.startWorker(sdk.WorkerOptions{Concurrency: 4, PollInterval: poll}, func(w *sdk.Worker) {
		for _, f := range []sdk.FlowSpec{quick, delayed} {
			w.Handle(f, "only", sdk.HandlerOptions{}, func(context.Context, *sdk.Task) (any, error) { return 1, nil })
		}
	})
	for i := range 3 {
		id, err := e.client.StartFlow(e.ctx, quick.Slug, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.client.WaitRun(e.waitCtx(30*time.Second), id); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		id, err = e.client.StartFlow(e.ctx, delayed.Slug, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.client.WaitRun(e.waitCtx(poll/2), id); err != nil {
			t.Fatalf("delayed run %d: %v (after %v)", i, err, time.Since(start))
		}
	}
}

// A worker that reports a completion together with a claim leaves the
// announcement of the tasks it queued to that claim. Tasks the claim does not
// take are still announced at once: those of a step another worker serves,
// and a delayed task (to this worker itself, which then waits for it).
func TestQueuedTasksAnnouncedAfterTheReportsClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	split := sdk.FlowSpec{Slug: "split_chain", Steps: []sdk.StepSpec{{Slug: "a"}, {Slug: "b", Deps: []string{"a"}}}}
	delayed := sdk.FlowSpec{Slug: "delayed_chain", Steps: []sdk.StepSpec{
		{Slug: "a"}, {Slug: "b", Deps: []string{"a"}, StartDelay: 200 * time.Millisecond}}}
	if err := e.client.EnsureFlows(e.ctx, split, delayed); err != nil {
		t.Fatal(err)
	}
	// The delayed chain's first handler returns only once the claim loop
	// has asked when a task next becomes visible (nothing, then): without
	// the announcement, the loop would then sleep until the next poll.
	asked := &countNextVisible{}
	const poll = time.Minute
	one := func(context.Context, *sdk.Task) (any, error) { return 1, nil }
	afterAnAnswer := func(context.Context, *sdk.Task) (any, error) {
		before := asked.n.Load()
		eventually(t, 10*time.Second, "the claim loop to ask next_visible_at", func() bool { return asked.n.Load() > before })
		return 1, nil
	}
	e.startWorkerOn(e.tracedPool(asked), sdk.WorkerOptions{Concurrency: 4, PollInterval: poll}, func(w *sdk.Worker) {
		w.Handle(split, "a", sdk.HandlerOptions{}, one)
		w.Handle(delayed, "a", sdk.HandlerOptions{}, afterAnAnswer)
		w.Handle(delayed, "b", sdk.HandlerOptions{}, one)
	})
	e.startWorker(sdk.WorkerOptions{Concurrency: 4, PollInterval: poll}, func(w *sdk.Worker) {
		w.Handle(split, "b", sdk.HandlerOptions{}, one)
	})
	for i := range 3 {
		for _, f := range []sdk.FlowSpec{split, delayed} {
			id, err := e.client.StartFlow(e.ctx, f.Slug, nil)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := e.client.WaitRun(e.waitCtx(poll/2), id); err != nil {
				t.Fatalf("%s, run %d: %v (after %v)", f.Slug, i, err, time.Since(start))
			}
		}
	}
}

// countNextVisible counts the next_visible_at statements a pool has run.
type countNextVisible struct{ n atomic.Int64 }

type tracedSQL struct{}

func (c *countNextVisible) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, tracedSQL{}, data.SQL)
}

func (c *countNextVisible) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	if sql, _ := ctx.Value(tracedSQL{}).(string); data.Err == nil && strings.Contains(sql, "pgflow.next_visible_at(") {
		c.n.Add(1)
	}
}
