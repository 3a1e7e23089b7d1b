package sdk_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pgflow-go/pgflow/sdk"
	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

// TestPostgresRestartDuringRun stops the database in the middle of a run
// and starts it again on the same port: the worker and the waiting client
// reconnect, and the run completes with every element once.
func TestPostgresRestartDuringRun(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := throwawaypg.New(ctx, throwawaypg.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	pool, err := pgxpool.New(ctx, srv.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := sdk.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, pool: pool, client: sdk.NewClient(pool, sdk.WithClientLogger(testLogger()))}
	defer e.client.Close()

	const n = 300
	var done atomic.Int32
	var mu sync.Mutex
	ran := map[int]int{}
	worker := e.startWorker(sdk.WorkerOptions{Concurrency: 8, PollInterval: 200 * time.Millisecond}, func(w *sdk.Worker) {
		sdk.HandleStep(w, fanoutFlow, "items", func(ctx context.Context, n int, _ struct{}) ([]int, error) {
			items := sequence(n)
			return items, nil
		})
		sdk.HandleFanout(w, fanoutFlow, "square", func(ctx context.Context, i int) (square, error) {
			select {
			case <-time.After(5 * time.Millisecond):
			case <-ctx.Done():
				return square{}, ctx.Err()
			}
			mu.Lock()
			ran[i]++
			mu.Unlock()
			done.Add(1)
			return square{Index: i, Square: i * i}, nil
		})
		sdk.HandleStep(w, fanoutFlow, "total", func(ctx context.Context, n int, deps struct {
			Square []square `json:"square"`
		}) (int, error) {
			total := 0
			for i, s := range deps.Square {
				if s.Index != i {
					return 0, sdk.Permanent(errOrderLost)
				}
				total += s.Square
			}
			return total, nil
		})
	})
	defer worker.stop(30 * time.Second) // before the server goes
	run, err := fanoutFlow.Start(ctx, e.client, n)
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	var out fanoutOut
	go func() {
		var err error
		out, err = run.Wait(ctx)
		waited <- err
	}()

	eventually(t, time.Minute, "a third of the fanout", func() bool { return done.Load() >= n/3 })
	if err := srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stoppedAt := done.Load()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if out.Total != sumOfSquares(n) {
		t.Fatalf("total %d, want %d", out.Total, sumOfSquares(n))
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		if ran[i] == 0 {
			t.Fatalf("item %d never ran", i)
		}
	}
	t.Logf("restarted after %d of %d items; %d handler runs in all", stoppedAt, n, done.Load())
}

var errOrderLost = errorString("aggregated output out of order")

type errorString string

func (e errorString) Error() string { return string(e) }

// TestNoGoroutineLeaks runs a worker and a client through a run and checks
// that stopping them leaves no goroutine behind. Not parallel, so that no
// other test's goroutines are around.
func TestNoGoroutineLeaks(t *testing.T) {
	e := newEnv(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pool, err := pgxpool.New(e.ctx, e.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	client := sdk.NewClient(pool, sdk.WithClientLogger(testLogger()))
	defer client.Close()
	w := sdk.NewWorker(pool, sdk.WorkerOptions{Logger: testLogger()})
	registerLinear(w)
	ctx, stop := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	run, err := linearFlow.Start(e.ctx, client, linearIn{N: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run.Wait(e.waitCtx(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
