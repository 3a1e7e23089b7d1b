// Command example runs the analyze-websites flow (package sites).
//
//	example [demo] [-n 25] [-fail-every 5]   the flow end to end, in one process
//	example worker [-concurrency 16]         a worker, until SIGINT/SIGTERM
//	example start [-n 25] [-wait]            start a run and print its id
//	example status <run-id>                  a run with its steps and task counts
//
// demo uses DATABASE_URL when it is set and otherwise starts a throwaway
// PostgreSQL; the other commands need DATABASE_URL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/example/sites"
	"github.com/pgflow-go/pgflow/sdk"
	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "demo"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "demo":
		err = demoCommand(ctx, args, stdout, stderr)
	case "worker":
		err = workerCommand(ctx, args, stderr)
	case "start":
		err = startCommand(ctx, args, stdout)
	case "status":
		err = statusCommand(ctx, args, stdout)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, "usage: example [demo|worker|start|status] [flags]; see the package documentation")
		return 0
	default:
		err = usageError(fmt.Sprintf("unknown command %q (want demo, worker, start or status)", cmd))
	}
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &usage):
		fmt.Fprintln(stderr, "example:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "example:", err)
		return 1
	}
}

type usageError string

func (e usageError) Error() string { return string(e) }

func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return usageError(err.Error())
	}
	return nil
}

// connect opens a pool on DATABASE_URL.
func connect(ctx context.Context) (*pgxpool.Pool, error) {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return nil, usageError("DATABASE_URL is not set")
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	return pool, nil
}

func logger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// demoCommand runs the flow end to end in one process.
func demoCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	n := fs.Int("n", 25, "number of sites")
	failEvery := fs.Int("fail-every", 5, "make about one site in this many fail its first attempt (0: none)")
	delay := fs.Duration("delay", 20*time.Millisecond, "simulated fetch time per site")
	if err := parse(fs, args); err != nil {
		return err
	}
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Fprintln(stdout, "DATABASE_URL is not set: starting a throwaway PostgreSQL...")
		srv, err := throwawaypg.New(ctx, throwawaypg.Options{Fast: true})
		if err != nil {
			return err
		}
		defer srv.Close()
		url = srv.ConnString()
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	summary, err := demo(ctx, pool, demoOptions{Sites: *n, FailEvery: *failEvery, Delay: *delay, Out: stdout, Log: stderr})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "summary: %d sites, %d words in all, largest %s, %d retried after a failure\n",
		summary.Sites, summary.TotalWords, summary.Largest, summary.Retried)
	return nil
}

type demoOptions struct {
	Sites     int
	FailEvery int
	Delay     time.Duration
	Out, Log  io.Writer
}

// demo migrates, starts a worker, runs the flow over opts.Sites sites while
// showing progress, and returns the typed summary.
func demo(ctx context.Context, pool *pgxpool.Pool, opts demoOptions) (sites.Summary, error) {
	if err := sdk.Migrate(ctx, pool); err != nil {
		return sites.Summary{}, err
	}
	// Retries are part of the demo (see FailEvery): log only errors.
	w := sdk.NewWorker(pool, sdk.WorkerOptions{Concurrency: 16, Logger: logger(opts.Log, slog.LevelError)})
	sites.Register(w, &sites.Analyzer{Delay: opts.Delay, FailEvery: opts.FailEvery})
	workerCtx, stopWorker := context.WithCancel(ctx)
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.Run(workerCtx) }()
	defer func() {
		stopWorker()
		<-workerDone
	}()

	client := sdk.NewClient(pool, sdk.WithClientLogger(logger(opts.Log, slog.LevelWarn)))
	defer client.Close()
	run, err := sites.AnalyzeWebsites.Start(ctx, client, sites.SitesInput{URLs: sites.URLs(opts.Sites)})
	if err != nil {
		return sites.Summary{}, err
	}
	fmt.Fprintf(opts.Out, "started run %s over %d sites\n", run.ID(), opts.Sites)

	progressDone := make(chan struct{})
	stopProgress := showProgress(ctx, run, opts.Out, progressDone)
	out, err := run.Wait(ctx)
	stopProgress()
	<-progressDone
	if err != nil {
		return sites.Summary{}, err
	}
	return out.Summarize, nil
}

// showProgress prints the run's completed tasks now and then: updating one
// line in place on a terminal, a line per change otherwise.
func showProgress(ctx context.Context, run *sdk.Run[sites.AnalyzeWebsitesOutput], out io.Writer, done chan struct{}) (stop func()) {
	ctx, stop = context.WithCancel(ctx)
	tty := isTerminal(out)
	go func() {
		defer close(done)
		last := ""
		print := func(ctx context.Context) {
			info, err := run.Get(ctx)
			if err != nil {
				return
			}
			line := progressLine(info)
			if line == last {
				return
			}
			last = line
			if tty {
				fmt.Fprintf(out, "\r%s\x1b[K", line)
			} else {
				fmt.Fprintln(out, line)
			}
		}
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			print(ctx)
			select {
			case <-ctx.Done():
				final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				print(final)
				cancel()
				if tty {
					fmt.Fprintln(out)
				}
				return
			case <-tick.C:
			}
		}
	}()
	return stop
}

func progressLine(info *sdk.RunInfo) string {
	done, total := info.Progress()
	var parts []string
	for _, s := range info.Steps {
		if s.TotalTasks == nil {
			parts = append(parts, fmt.Sprintf("%s %s", s.Slug, s.Status))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d", s.Slug, s.CompletedTasks(), *s.TotalTasks))
	}
	return fmt.Sprintf("progress: %d/%d tasks (%s)", done, total, strings.Join(parts, ", "))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// workerCommand runs a worker until SIGINT/SIGTERM, then shuts down gracefully.
func workerCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	concurrency := fs.Int("concurrency", 16, "handlers running at once")
	failEvery := fs.Int("fail-every", 0, "make about one site in this many fail its first attempt")
	delay := fs.Duration("delay", 20*time.Millisecond, "simulated fetch time per site")
	shutdown := fs.Duration("shutdown-timeout", 30*time.Second, "how long to wait for running handlers when stopping")
	if err := parse(fs, args); err != nil {
		return err
	}
	pool, err := connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := sdk.Migrate(ctx, pool); err != nil {
		return err
	}
	w := sdk.NewWorker(pool, sdk.WorkerOptions{Concurrency: *concurrency, ShutdownTimeout: *shutdown, Logger: logger(stderr, slog.LevelInfo)})
	sites.Register(w, &sites.Analyzer{Delay: *delay, FailEvery: *failEvery})
	return w.Run(ctx)
}

// startCommand starts a run and prints its id (and, with -wait, its result).
func startCommand(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("start", flag.ContinueOnError)
	n := fs.Int("n", 25, "number of sites")
	wait := fs.Bool("wait", false, "wait for the result and print it")
	if err := parse(fs, args); err != nil {
		return err
	}
	pool, err := connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	client := sdk.NewClient(pool)
	defer client.Close()
	run, err := sites.AnalyzeWebsites.Start(ctx, client, sites.SitesInput{URLs: sites.URLs(*n)})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, run.ID())
	if !*wait {
		return nil
	}
	out, err := run.Wait(ctx)
	if err != nil {
		return err
	}
	s := out.Summarize
	fmt.Fprintf(stdout, "summary: %d sites, %d words in all, largest %s, %d retried after a failure\n",
		s.Sites, s.TotalWords, s.Largest, s.Retried)
	return nil
}

// statusCommand prints a run with its step states and task counts.
func statusCommand(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return usageError("status takes one run id")
	}
	id, err := sdk.ParseRunID(args[0])
	if err != nil {
		return usageError(err.Error())
	}
	pool, err := connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	client := sdk.NewClient(pool)
	defer client.Close()
	info, err := client.GetRun(ctx, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "run %s of flow %s: %s\n", info.ID, info.Flow, info.Status)
	if info.ErrorMessage != "" {
		fmt.Fprintf(stdout, "  failed at step %s: %s\n", info.ErrorStep, info.ErrorMessage)
	}
	for _, s := range info.Steps {
		tasks := "-"
		if s.TotalTasks != nil {
			tasks = fmt.Sprintf("%d/%d tasks completed", s.CompletedTasks(), *s.TotalTasks)
		}
		fmt.Fprintf(stdout, "  %-14s %-7s %-10s %s\n", s.Slug, s.Type, s.Status, tasks)
	}
	if info.Status == sdk.RunCompleted {
		fmt.Fprintf(stdout, "  output: %s\n", info.Output)
	}
	return nil
}
