package sdk

import (
	"context"
	"sync"
	"testing"
	"time"
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
