package sdk_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/testdb"
	"github.com/pgflow-go/pgflow/sdk"
)

// testLogger discards logs unless PGFLOW_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("PGFLOW_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// env is one test's database, client and workers.
type env struct {
	t      *testing.T
	ctx    context.Context
	pool   *pgxpool.Pool
	client *sdk.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	pool := testdb.NewPool(t)
	testdb.CheckStatusesAtEnd(t, pool)
	client := sdk.NewClient(pool, sdk.WithClientLogger(testLogger()))
	t.Cleanup(client.Close)
	return &env{t: t, ctx: ctx, pool: pool, client: client}
}

// runningWorker is a worker running in the background.
type runningWorker struct {
	*sdk.Worker
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// startWorker registers handlers on a new worker and runs it until the
// test ends (or stop is called).
func (e *env) startWorker(opts sdk.WorkerOptions, register func(w *sdk.Worker)) *runningWorker {
	e.t.Helper()
	return e.startWorkerOn(e.pool, opts, register)
}

// startWorkerOn is startWorker with a worker using pool.
func (e *env) startWorkerOn(pool *pgxpool.Pool, opts sdk.WorkerOptions, register func(w *sdk.Worker)) *runningWorker {
	e.t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	w := sdk.NewWorker(pool, opts)
	register(w)
	ctx, cancel := context.WithCancel(context.Background())
	rw := &runningWorker{Worker: w, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	e.t.Cleanup(func() {
		if err := rw.stop(30 * time.Second); err != nil {
			e.t.Errorf("worker: %v", err)
		}
	})
	return rw
}

// stop cancels the worker and waits for Run to return.
func (rw *runningWorker) stop(timeout time.Duration) error {
	rw.once.Do(func() {
		rw.cancel()
		select {
		case rw.err = <-rw.done:
		case <-time.After(timeout):
			rw.err = errors.New("Run did not return in time")
		}
	})
	return rw.err
}

// eventually waits for cond, failing the test after the deadline.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tracedPool opens a pool to the test's database whose connections report
// their statements to tracer; it closes when the test ends.
func (e *env) tracedPool(tracer pgx.QueryTracer) *pgxpool.Pool {
	e.t.Helper()
	cfg := e.pool.Config().Copy()
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(e.ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(pool.Close)
	return pool
}

// waitCtx bounds a Wait call.
func (e *env) waitCtx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(e.ctx, d)
	e.t.Cleanup(cancel)
	return ctx
}

// startRun starts a run of f with input in, failing the test if it cannot.
func startRun[In, Out any](e *env, f *sdk.Flow[In, Out], in In) *sdk.Run[Out] {
	e.t.Helper()
	run, err := f.Start(e.ctx, e.client, in)
	if err != nil {
		e.t.Fatal(err)
	}
	return run
}

// runToEnd starts a run of f with input in and returns its output, failing
// the test if the run fails or does not end within d.
func runToEnd[In, Out any](e *env, f *sdk.Flow[In, Out], in In, d time.Duration) Out {
	e.t.Helper()
	out, err := startRun(e, f, in).Wait(e.waitCtx(d))
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// sequence returns 0, 1, …, n-1.
func sequence(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
