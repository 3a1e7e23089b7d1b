package sdk

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// WorkerOptions configure a Worker. Zero values mean the defaults.
type WorkerOptions struct {
	// Concurrency is how many handlers may run at once (default 16).
	Concurrency int
	// Logger receives the worker's logs (default slog.Default()). Tasks
	// starting and completing are logged at Debug, failures at Warn.
	Logger *slog.Logger
	// PollInterval is how often the worker looks for tasks when no
	// notification arrives (default 5s). Notifications make it react at once.
	PollInterval time.Duration
	// ShutdownTimeout bounds how long Run waits for running handlers after
	// its context is done (default 30s). Handlers still running then see
	// their context cancelled and their tasks go back to the queue.
	ShutdownTimeout time.Duration
	// LeaseGrace is how long past a task's timeout its lease lasts before
	// another worker may take the task over (default 5s).
	LeaseGrace time.Duration
	// HeartbeatInterval is how often the worker records that it is alive
	// (default 10s).
	HeartbeatInterval time.Duration
	// MaxClaim caps the tasks claimed in one statement (default Concurrency).
	MaxClaim int
	// MaxOutputBytes caps the size of one task's output as JSON (default
	// 64 MiB): a larger output fails its task, permanently, with an error
	// saying so, instead of bloating the database.
	MaxOutputBytes int
	// Reporters is how many batches of results may be reported to the
	// database at once (default 2). One reporter caps a worker's throughput
	// at what one database connection can commit; more let completions use
	// more of the database's cores. Each takes a connection of the pool.
	Reporters int
}

func (o WorkerOptions) withDefaults() WorkerOptions {
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 5 * time.Second
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if o.LeaseGrace <= 0 {
		o.LeaseGrace = 5 * time.Second
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 10 * time.Second
	}
	if o.MaxClaim <= 0 || o.MaxClaim > o.Concurrency {
		o.MaxClaim = o.Concurrency
	}
	if o.MaxOutputBytes <= 0 {
		o.MaxOutputBytes = 64 << 20
	}
	if o.Reporters <= 0 {
		o.Reporters = 2
	}
	return o
}

// Worker claims tasks of the flows registered on it, runs their handlers
// and reports the results. Register handlers (generated Register functions
// do it), then call Run. A Worker runs once.
type Worker struct {
	pool *pgxpool.Pool
	opts WorkerOptions
	id   [16]byte

	mu      sync.Mutex
	flows   map[string]FlowSpec
	regs    map[stepKey]*registration
	errs    []error
	started bool
}

type stepKey struct{ flow, step string }

type registration struct {
	key     stepKey
	opts    HandlerOptions
	handler Handler
}

// NewWorker returns a worker using pool.
func NewWorker(pool *pgxpool.Pool, opts WorkerOptions) *Worker {
	w := &Worker{
		pool:  pool,
		opts:  opts.withDefaults(),
		flows: map[string]FlowSpec{},
		regs:  map[stepKey]*registration{},
	}
	_, _ = rand.Read(w.id[:]) // never fails
	w.id[6] = w.id[6]&0x0f | 0x40
	w.id[8] = w.id[8]&0x3f | 0x80
	return w
}

// ID is the worker's id, as recorded in the pgflow.workers table and on the
// tasks it claims.
func (w *Worker) ID() RunID { return RunID(w.id) }

// Handle registers h for a step of a flow. Mistakes (an unknown step, a
// second handler for a step, a flow registered with two different specs,
// registering after Run started) are reported by Run.
func (w *Worker) Handle(flow FlowSpec, step string, opts HandlerOptions, h Handler) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.started:
		w.errs = append(w.errs, fmt.Errorf("pgflow: handler for %q/%q registered after Run started", flow.Slug, step))
		return
	case h == nil:
		w.errs = append(w.errs, fmt.Errorf("pgflow: nil handler for %q/%q", flow.Slug, step))
		return
	}
	if _, ok := flow.Step(step); !ok {
		w.errs = append(w.errs, fmt.Errorf("pgflow: flow %q has no step %q", flow.Slug, step))
		return
	}
	if old, ok := w.flows[flow.Slug]; ok && !sameSpec(old, flow) {
		w.errs = append(w.errs, fmt.Errorf("pgflow: flow %q registered with two different specs", flow.Slug))
		return
	}
	key := stepKey{flow.Slug, step}
	if _, ok := w.regs[key]; ok {
		w.errs = append(w.errs, fmt.Errorf("pgflow: a second handler for step %q of flow %q", step, flow.Slug))
		return
	}
	w.flows[flow.Slug] = cloneSpec(flow)
	w.regs[key] = &registration{key: key, opts: opts, handler: h}
}

func (w *Worker) addError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs = append(w.errs, err)
}

func sameSpec(a, b FlowSpec) bool {
	if a.Slug != b.Slug || a.MaxAttempts != b.MaxAttempts || a.BaseDelay != b.BaseDelay || a.Timeout != b.Timeout || len(a.Steps) != len(b.Steps) {
		return false
	}
	for i := range a.Steps {
		x, y := a.Steps[i], b.Steps[i]
		if x.Slug != y.Slug || x.Fanout != y.Fanout || !slices.Equal(x.Deps, y.Deps) || x.MaxAttempts != y.MaxAttempts ||
			x.BaseDelay != y.BaseDelay || x.Timeout != y.Timeout || x.StartDelay != y.StartDelay {
			return false
		}
	}
	return true
}

// Run syncs the registered flows' shapes (see EnsureFlows), then claims and
// runs tasks until ctx is done, and then shuts down gracefully: it stops
// claiming, waits up to ShutdownTimeout for running handlers, hands the
// tasks of handlers still running back to the queue, and reports every
// result it has. While the database is unreachable (at start or later) it
// retries with backoff. It returns nil after a shutdown caused by ctx, or
// the error that kept it from starting.
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.started {
		w.mu.Unlock()
		return errors.New("pgflow: Worker.Run called twice")
	}
	w.started = true
	errs := slices.Clone(w.errs)
	if len(w.regs) == 0 {
		errs = append(errs, errors.New("pgflow: no handlers registered"))
	}
	w.mu.Unlock()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := w.syncFlows(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s := newSession(w)
	s.run(ctx)
	return nil
}

// syncFlows ensures the registered flows exist, retrying while the
// database is unreachable.
func (w *Worker) syncFlows(ctx context.Context) error {
	specs := make([]FlowSpec, 0, len(w.flows))
	for _, slug := range sortedKeys(w.flows) {
		specs = append(specs, w.flows[slug])
	}
	b := newBackoff()
	for {
		err := checkSchema(ctx, w.pool)
		if err == nil {
			err = EnsureFlows(ctx, w.pool, specs...)
		}
		if err == nil || !transient(err) {
			return err
		}
		w.opts.Logger.Warn("pgflow: worker cannot reach the database; retrying", "error", err)
		if !b.wait(ctx) {
			return ctx.Err()
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}

// isRunsNotification reports whether a notification says runs ended.
func isRunsNotification(n *pgconn.Notification) bool { return n.Channel == channelRuns }
