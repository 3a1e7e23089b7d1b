package sdk

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/testdb"
)

// runWave hands n blocking functions to the session's handler goroutines
// with handoff, waits until all of them run, and returns a function that
// lets them return and waits until they have.
func runWave(t *testing.T, n int, handoff func(func())) (finish func()) {
	t.Helper()
	release := make(chan struct{})
	var running, done sync.WaitGroup
	running.Add(n)
	done.Add(n)
	for range n {
		handoff(func() {
			running.Done()
			<-release
			done.Done()
		})
	}
	running.Wait()
	return func() {
		close(release)
		done.Wait()
	}
}

// waitHandlers waits until the session has want handler goroutines alive.
func waitHandlers(t *testing.T, s *session, want int32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.handlers.Load() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d handler goroutines alive, want %d", s.handlers.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestHandlerGoroutinesAreReused(t *testing.T) {
	tests := []struct {
		name        string
		handlerIdle time.Duration
		end         func(s *session) // what ends the idle goroutines
	}{
		{"retired when idle", 500 * time.Millisecond, func(*session) {}},
		{"retired when the session ends", time.Hour, func(s *session) { close(s.retire) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &session{idle: make(chan func()), retire: make(chan struct{}), handlerIdle: tt.handlerIdle, handlerCtx: context.Background()}
			// The first wave starts a goroutine per function.
			runWave(t, 20, s.launch)()
			if got := s.handlers.Load(); got != 20 {
				t.Fatalf("%d handler goroutines after the first wave, want 20", got)
			}
			// The second is taken by those goroutines: each handoff waits
			// for an idle one, and none is started.
			finish := runWave(t, 20, func(f func()) {
				select {
				case s.idle <- f:
				case <-time.After(10 * time.Second):
					t.Fatal("no idle handler goroutine took a function")
				}
			})
			if got := s.handlers.Load(); got != 20 {
				t.Fatalf("%d handler goroutines during the second wave, want 20", got)
			}
			finish()
			tt.end(s)
			waitHandlers(t, s, 0)
		})
	}
}

// queryCounter counts the statements a pool runs, by SQL text.
type queryCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (c *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts[data.SQL]++
	return ctx
}

func (c *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *queryCounter) count(sql string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[sql]
}

func TestNextVisibleIsAskedAgainOnlyWhenStale(t *testing.T) {
	ctx := context.Background()
	cfg := testdb.NewPool(t).Config()
	counter := &queryCounter{counts: map[string]int{}}
	cfg.ConnConfig.Tracer = counter
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	w := NewWorker(pool, WorkerOptions{PollInterval: time.Minute})
	s := &session{w: w, opts: w.opts, flowSlugs: []string{"nothing"}, stepSlugs: []string{"here"}, visibleReuse: time.Hour}
	past := time.Now().Add(-time.Second)

	steps := []struct {
		name   string
		before func()
		asks   bool
	}{
		{"first time", func() {}, true},
		{"answer still fresh", func() {}, false},
		{"this worker queued retries", func() { s.retried.Store(true) }, true},
		{"answer fresh again", func() {}, false},
		{"answered moment has passed", func() { s.visibleAt = &past }, true},
		{"answer about to expire", func() { s.visibleAsked = time.Now().Add(-s.visibleReuse + time.Second) }, false},
		{"answer too old", func() { s.visibleReuse = 0 }, true},
	}
	for _, step := range steps {
		step.before()
		before := counter.count(nextVisibleSQL)
		trusted := time.Until(s.visibleAsked.Add(s.visibleReuse)) // how long the last answer stays trusted
		wait := s.untilNextVisible(ctx)
		// Nothing is pending: a fresh answer waits the poll interval, a
		// reused one no longer than the answer stays trusted.
		if want := time.Minute; step.asks && wait != want || !step.asks && (wait <= 0 || wait > trusted) {
			t.Errorf("%s: waits %v", step.name, wait)
		}
		if asked := counter.count(nextVisibleSQL) > before; asked != step.asks {
			t.Errorf("%s: asked the database %v, want %v", step.name, asked, step.asks)
		}
	}
}

func TestClaimLoopIsWokenWhenAReportClaimGivesItsSlotsBack(t *testing.T) {
	const slots = 4
	tests := []struct {
		name    string
		running int // slots busy with handlers
		least   int // slots the claim loop asks for
		wake    bool
	}{
		{"every free slot held by a report claim", 0, 1, true},
		{"slots busy with handlers, none held", slots, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &session{opts: WorkerOptions{Concurrency: slots, MaxClaim: slots},
				wake: make(chan struct{}, 1), drained: make(chan struct{}, 1), running: tt.running}
			n := s.reserve(1) // a report claims for the free slots, if any
			if got := s.reserveForLoop(tt.least); got != 0 {
				t.Fatalf("claim loop reserved %d slots", got)
			}
			if len(s.wake) != 0 {
				t.Fatal("woken before the report claim gave its slots back")
			}
			s.startClaimed(nil, n)
			if woken := len(s.wake) == 1; woken != tt.wake {
				t.Errorf("woken when the slots were given back: %v, want %v", woken, tt.wake)
			}
		})
	}
}

// A report that carries a claim hands the next step of a chain back to the
// worker in the same statement, and so announces nothing: no worker, this
// one included, is woken for a task already taken.
func TestReportHandsTheNextStepBackWithoutAnnouncing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := testdb.NewPool(t)
	chain := FlowSpec{Slug: "handed_back", Steps: []StepSpec{{Slug: "a"}, {Slug: "b", Deps: []string{"a"}}}}
	if err := EnsureFlows(ctx, pool, chain); err != nil {
		t.Fatal(err)
	}
	w := NewWorker(pool, WorkerOptions{Concurrency: 4, PollInterval: time.Minute})
	for _, step := range []string{"a", "b"} {
		w.Handle(chain, step, HandlerOptions{}, func(context.Context, *Task) (any, error) { return 1, nil })
	}
	s := newSession(w)
	defer close(s.retire)
	s.claiming.Store(true)

	listener, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Release()
	if _, err := listener.Exec(ctx, "LISTEN pgflow_tasks"); err != nil {
		t.Fatal(err)
	}
	// announced counts the announcements before a marker notified now.
	announced := func() int {
		t.Helper()
		if _, err := pool.Exec(ctx, "SELECT pg_notify('pgflow_tasks', 'marker')"); err != nil {
			t.Fatal(err)
		}
		for n := 0; ; n++ {
			m, err := listener.Conn().WaitForNotification(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if m.Payload == "marker" {
				return n
			}
		}
	}

	run, err := NewClient(pool).StartFlow(ctx, chain.Slug, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.claim(ctx, 1)
	if err != nil || len(a) != 1 || a[0].task.Step != "a" {
		t.Fatalf("claimed %v, %v; want task a", a, err)
	}
	if n := announced(); n != 1 {
		t.Fatalf("%d announcements of the start, want 1", n)
	}
	if err := s.sendCompletions(ctx, []result{{task: a[0].task, output: []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	if n := announced(); n != 0 {
		t.Errorf("%d announcements of the report, want 0", n)
	}
	// b was claimed by the report and ran here; its result waits for a
	// reporter.
	select {
	case r := <-s.results[s.reporterOf(&Task{RunID: run, Step: "b"})]:
		if r.task.RunID != run || r.task.Step != "b" || r.err != nil {
			t.Fatalf("result %+v, want b of the run", r)
		}
	case <-ctx.Done():
		t.Fatal("b did not run")
	}
}
