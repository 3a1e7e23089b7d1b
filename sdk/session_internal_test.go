package sdk

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
		{"answer too old", func() { s.visibleReuse = 0 }, true},
	}
	for _, step := range steps {
		step.before()
		before := counter.count(nextVisibleSQL)
		if wait := s.untilNextVisible(ctx); wait != time.Minute {
			t.Errorf("%s: waits %v with nothing pending, want the poll interval", step.name, wait)
		}
		if asked := counter.count(nextVisibleSQL) > before; asked != step.asks {
			t.Errorf("%s: asked the database %v, want %v", step.name, asked, step.asks)
		}
	}
}

func TestClaimLoopWakeUps(t *testing.T) {
	const slots = 4
	newTestSession := func() *session {
		return &session{
			opts:        WorkerOptions{Concurrency: slots, MaxClaim: slots},
			wake:        make(chan struct{}, 1),
			drained:     make(chan struct{}, 1),
			flowSet:     map[string]bool{"f": true},
			claimPIDs:   map[uint32]int{},
			claimedPIDs: map[uint32]bool{},
		}
	}
	woken := func(s *session) bool {
		select {
		case <-s.wake:
			return true
		default:
			return false
		}
	}
	queued := func(s *session, pid uint32) { // tasks of flow f queued by server process pid
		s.notified(&pgconn.Notification{PID: pid, Channel: channelTasks, Payload: "f"})
	}
	tests := []struct {
		name  string
		steps func(t *testing.T, s *session) // ends with the event whose wake-up is checked
		wake  bool
	}{
		{"tasks queued by another process", func(t *testing.T, s *session) { queued(s, 9) }, true},
		{"tasks of a flow the worker does not handle", func(t *testing.T, s *session) {
			s.notified(&pgconn.Notification{PID: 9, Channel: channelTasks, Payload: "other"})
		}, false},
		{"tasks queued where a report claim runs", func(t *testing.T, s *session) {
			s.reportClaimStarted(7)
			queued(s, 7)
		}, false},
		{"tasks queued by a report claim that came back short", func(t *testing.T, s *session) {
			s.reportClaimStarted(7)
			s.reportClaimEnded(7, true)
			queued(s, 7)
		}, false},
		{"the notification after that one", func(t *testing.T, s *session) {
			s.reportClaimStarted(7)
			s.reportClaimEnded(7, true)
			queued(s, 7)
			queued(s, 7)
		}, true},
		{"tasks queued by a report claim that came back full or failed", func(t *testing.T, s *session) {
			s.reportClaimStarted(7)
			s.reportClaimEnded(7, false)
			queued(s, 7)
		}, true},
		{"tasks queued by a report without a claim after a short one", func(t *testing.T, s *session) {
			s.reportClaimStarted(7)
			s.reportClaimEnded(7, true)
			s.forgetReportClaim(7)
			queued(s, 7)
		}, true},
		{"slots held by a report claim, given back", func(t *testing.T, s *session) {
			n := s.reserve(1)
			if got := s.reserveForLoop(1); got != 0 {
				t.Fatalf("claim loop reserved %d slots while a report holds them all", got)
			}
			if woken(s) {
				t.Fatal("woken before the report claim gave its slots back")
			}
			s.startClaimed(nil, n)
		}, true},
		{"slots busy with handlers, a claim's slots given back", func(t *testing.T, s *session) {
			s.running = slots - 1
			if got := s.reserveForLoop(2); got != 0 {
				t.Fatalf("claim loop reserved %d slots with one free, asking for two", got)
			}
			n := s.reserve(1)
			s.startClaimed(nil, n)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestSession()
			tt.steps(t, s)
			if got := woken(s); got != tt.wake {
				t.Errorf("claim loop woken: %v, want %v", got, tt.wake)
			}
		})
	}
}
