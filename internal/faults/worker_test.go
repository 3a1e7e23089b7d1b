package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/sdk"
)

// The test binary doubles as the worker process of the scenarios: started
// with FAULTS_WORKER=1 it runs workerMain instead of the tests. Its behaviour
// comes from the environment (see workerConfig).

// workerConfig is what a worker process reads from its environment.
type workerConfig struct {
	DatabaseURL     string
	Concurrency     int
	Delay           time.Duration // how long each fanout element takes
	Timeout         time.Duration // the step timeout
	LeaseGrace      time.Duration
	ShutdownTimeout time.Duration
	MaxOutputBytes  int
	// IgnoreContext lists elements whose first attempt ignores its context
	// and runs this long.
	IgnoreContext    map[int]bool
	IgnoreContextFor time.Duration
}

func (c workerConfig) env() []string {
	var ignore []string
	for i := range c.IgnoreContext {
		ignore = append(ignore, strconv.Itoa(i))
	}
	return []string{
		"FAULTS_WORKER=1",
		"DATABASE_URL=" + c.DatabaseURL,
		"FAULTS_CONCURRENCY=" + strconv.Itoa(c.Concurrency),
		"FAULTS_DELAY=" + c.Delay.String(),
		"FAULTS_TIMEOUT=" + c.Timeout.String(),
		"FAULTS_LEASE_GRACE=" + c.LeaseGrace.String(),
		"FAULTS_SHUTDOWN_TIMEOUT=" + c.ShutdownTimeout.String(),
		"FAULTS_MAX_OUTPUT=" + strconv.Itoa(c.MaxOutputBytes),
		"FAULTS_IGNORE_CONTEXT=" + strings.Join(ignore, ","),
		"FAULTS_IGNORE_CONTEXT_FOR=" + c.IgnoreContextFor.String(),
	}
}

func readWorkerConfig() (workerConfig, error) {
	c := workerConfig{DatabaseURL: os.Getenv("DATABASE_URL"), IgnoreContext: map[int]bool{}}
	var err error
	num := func(name string) int {
		n, e := strconv.Atoi(os.Getenv(name))
		if e != nil && err == nil {
			err = fmt.Errorf("%s: %w", name, e)
		}
		return n
	}
	dur := func(name string) time.Duration {
		d, e := time.ParseDuration(os.Getenv(name))
		if e != nil && err == nil {
			err = fmt.Errorf("%s: %w", name, e)
		}
		return d
	}
	c.Concurrency, c.MaxOutputBytes = num("FAULTS_CONCURRENCY"), num("FAULTS_MAX_OUTPUT")
	c.Delay, c.Timeout, c.LeaseGrace = dur("FAULTS_DELAY"), dur("FAULTS_TIMEOUT"), dur("FAULTS_LEASE_GRACE")
	c.ShutdownTimeout, c.IgnoreContextFor = dur("FAULTS_SHUTDOWN_TIMEOUT"), dur("FAULTS_IGNORE_CONTEXT_FOR")
	for _, s := range strings.Split(os.Getenv("FAULTS_IGNORE_CONTEXT"), ",") {
		if s != "" {
			c.IgnoreContext[num2(s)] = true
		}
	}
	return c, err
}

func num2(s string) int { n, _ := strconv.Atoi(s); return n }

// The scenarios' flows.
func fanoutSpec(timeout time.Duration) sdk.FlowSpec {
	return sdk.FlowSpec{Slug: "faults", MaxAttempts: 20, BaseDelay: 20 * time.Millisecond, Timeout: timeout,
		Steps: []sdk.StepSpec{{Slug: "each", Fanout: true}}}
}

func largeSpec(timeout time.Duration) sdk.FlowSpec {
	return sdk.FlowSpec{Slug: "large", MaxAttempts: 2, BaseDelay: 20 * time.Millisecond, Timeout: timeout,
		Steps: []sdk.StepSpec{
			{Slug: "big"},   // returns a string of input.BigBytes bytes
			{Slug: "items"}, // returns input.Items elements of input.ItemBytes bytes
			{Slug: "wide", Deps: []string{"items"}, Fanout: true}, // echoes each element's size
		}}
}

// element is the output of one fanout task of the faults flow.
type element struct {
	Index   int `json:"index"`
	Attempt int `json:"attempt"`
}

type largeInput struct {
	BigBytes  int `json:"big_bytes"`
	Items     int `json:"items"`
	ItemBytes int `json:"item_bytes"`
}

// workerAppName is the application_name of a worker process's sessions.
func workerAppName(pid int) string { return fmt.Sprintf("faults-worker-%d", pid) }

// workerMain runs a worker until SIGTERM/SIGINT (graceful) or SIGKILL.
func workerMain() int {
	cfg, err := readWorkerConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker config:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	poolConfig, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pool:", err)
		return 1
	}
	// The tests tell this worker's sessions apart by their name.
	poolConfig.ConnConfig.RuntimeParams["application_name"] = workerAppName(os.Getpid())
	pool, err := pgxpool.NewWithConfig(context.Background(), poolConfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pool:", err)
		return 1
	}
	defer pool.Close()
	// The handlers' own writes get a pool of their own, as an application's
	// would: the worker's claims and reports must not queue behind them.
	effectsConfig, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pool:", err)
		return 1
	}
	effectsConfig.MaxConns = 16
	effects, err := pgxpool.NewWithConfig(context.Background(), effectsConfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pool:", err)
		return 1
	}
	defer effects.Close()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	w := sdk.NewWorker(pool, sdk.WorkerOptions{
		Concurrency: cfg.Concurrency, Logger: logger, LeaseGrace: cfg.LeaseGrace,
		ShutdownTimeout: cfg.ShutdownTimeout, MaxOutputBytes: cfg.MaxOutputBytes,
		PollInterval: 500 * time.Millisecond,
	})
	pid := os.Getpid()
	fanout := sdk.NewFlow[[]int, map[string][]element](fanoutSpec(cfg.Timeout))
	sdk.HandleFanout(w, fanout, "each", func(ctx context.Context, i int) (element, error) {
		t, _ := sdk.TaskFromContext(ctx)
		if t.Attempt == 1 && cfg.IgnoreContext[i] {
			time.Sleep(cfg.IgnoreContextFor) // deliberately deaf to ctx
		} else {
			timer := time.NewTimer(cfg.Delay)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return element{}, ctx.Err()
			}
		}
		// The side effect, keyed by run, element and attempt.
		if _, err := effects.Exec(context.WithoutCancel(ctx),
			"INSERT INTO fault_effects (run_id, idx, attempt, pid) VALUES ($1, $2, $3, $4)",
			t.RunID.String(), i, t.Attempt, pid); err != nil {
			return element{}, err
		}
		return element{Index: i, Attempt: t.Attempt}, nil
	})
	large := sdk.NewFlow[largeInput, json.RawMessage](largeSpec(cfg.Timeout))
	sdk.HandleStep(w, large, "big", func(ctx context.Context, in largeInput, _ struct{}) (string, error) {
		return strings.Repeat("x", in.BigBytes), nil
	})
	sdk.HandleStep(w, large, "items", func(ctx context.Context, in largeInput, _ struct{}) ([]string, error) {
		items := make([]string, in.Items)
		for i := range items {
			items[i] = fmt.Sprintf("%06d", i) + strings.Repeat("y", max(0, in.ItemBytes-6))
		}
		return items, nil
	})
	sdk.HandleFanout(w, large, "wide", func(ctx context.Context, item string) (int, error) {
		return len(item), nil
	})
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	return 0
}
