package bench

import (
	"context"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/sdk"
)

// WorkerConfig is what the benchmark varies in its worker.
type WorkerConfig struct {
	Concurrency int // handler slots (sdk.WorkerOptions.Concurrency)
	Reporters   int // result batches reported at once (sdk.WorkerOptions.Reporters; 0: the default)
	// CPUProfile, when set, is the file the worker process writes its CPU
	// profile to (each worker process started overwrites it).
	CPUProfile string
}

// RunWorker runs a worker for the benchmark flows until its standard input
// closes (the benchmark's way of stopping it), then shuts down gracefully.
func RunWorker(databaseURL string, wc WorkerConfig) error {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return err
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	w := sdk.NewWorker(pool, sdk.WorkerOptions{
		Concurrency: wc.Concurrency,
		Reporters:   wc.Reporters,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	Register(w)
	if wc.CPUProfile != "" {
		f, err := os.Create(wc.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return w.Run(ctx)
}
