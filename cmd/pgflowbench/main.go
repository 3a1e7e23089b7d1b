// Command pgflowbench measures pgflow end to end on a PostgreSQL server:
//
//	pgflowbench [-quick] [-scenarios runs,fanout,chain-latency,rss] [-concurrency 1000] [-reporters 2]
//
// Scenarios:
//   - runs: N single-step runs (no-op handler) started in batches of 1,000 and
//     drained by one worker process: runs per second, first start to last end.
//   - fanout: one run whose fanout step has W items of about 100 bytes, for
//     each width: spawn seconds (the start call), drain seconds and tasks per
//     second, and the per-task cost of the widest relative to the narrowest.
//   - chain-latency: a 3-step chain started one at a time on an idle worker:
//     start-to-result p50 and p99.
//   - rss: the worker process's peak RSS while draining a wide fanout.
//
// Without DATABASE_URL it starts a throwaway PostgreSQL with default
// durability (fsync and synchronous_commit on). It prints a table and one
// JSON line per result.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"

	"github.com/pgflow-go/pgflow/internal/bench"
	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("pgflowbench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "small sizes: the whole benchmark in under a minute")
	scenarios := fs.String("scenarios", "runs,fanout,chain-latency,rss", "comma-separated scenarios to run")
	concurrency := fs.Int("concurrency", 1000, "the worker's concurrency (handler slots; River's tuned figure uses 1,000 workers)")
	reporters := fs.Int("reporters", 0, "result batches the worker reports at once (0: the SDK's default)")
	runs := fs.Int("runs", 20000, "single-step runs of the runs scenario")
	widths := fs.String("widths", "1000,10000,100000", "fanout widths")
	chains := fs.Int("chains", 200, "chains of the chain-latency scenario")
	rssWidth := fs.Int("rss-width", 100000, "fanout width of the rss scenario")
	cpuProfile := fs.String("worker-cpuprofile", "", "write the worker process's CPU profile to this file (the last worker's, when a scenario starts several)")
	workerMode := fs.Bool("worker", false, "run as the benchmark's worker process (internal)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	url := os.Getenv("DATABASE_URL")
	if *workerMode {
		if err := bench.RunWorker(url, bench.WorkerConfig{Concurrency: *concurrency, Reporters: *reporters, CPUProfile: *cpuProfile}); err != nil {
			fmt.Fprintln(os.Stderr, "pgflowbench worker:", err)
			return 1
		}
		return 0
	}
	if *quick {
		*runs, *widths, *chains, *rssWidth = 5000, "1000,10000,100000", 100, 100000
	}
	var ws []int
	for _, s := range strings.Split(*widths, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "pgflowbench: invalid width %q\n", s)
			return 2
		}
		ws = append(ws, n)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	dataDir := ""
	if url == "" {
		fmt.Fprintln(os.Stderr, "pgflowbench: starting a throwaway PostgreSQL (default durability); set DATABASE_URL to use your own")
		srv, err := throwawaypg.New(ctx, throwawaypg.Options{})
		if err != nil {
			fmt.Fprintln(os.Stderr, "pgflowbench:", err)
			return 1
		}
		defer srv.Close()
		url = srv.ConnString()
		dataDir = srv.DataDir()
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgflowbench:", err)
		return 1
	}
	results, err := bench.Run(ctx, bench.Config{
		DatabaseURL: url,
		Scenarios:   strings.Split(*scenarios, ","),
		Runs:        *runs,
		Widths:      ws,
		Chains:      *chains,
		RSSWidth:    *rssWidth,
		Worker:      bench.WorkerConfig{Concurrency: *concurrency, Reporters: *reporters, CPUProfile: *cpuProfile},
		Log:         os.Stderr,
		DataDir:     dataDir,
		WorkerCommand: func(databaseURL string, wc bench.WorkerConfig) *exec.Cmd {
			cmd := exec.Command(self, "-worker", "-concurrency", strconv.Itoa(wc.Concurrency),
				"-reporters", strconv.Itoa(wc.Reporters), "-worker-cpuprofile", wc.CPUProfile)
			cmd.Env = append(os.Environ(), "DATABASE_URL="+databaseURL)
			return cmd
		},
	})
	bench.WriteTable(os.Stdout, results)
	if werr := bench.WriteJSON(os.Stdout, results); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgflowbench:", err)
		return 1
	}
	return 0
}
