package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Querier runs statements: a pgx.Tx, a *pgxpool.Pool or a *pgx.Conn. The
// ...Tx variants of Client's methods take one so that runs can start inside
// the caller's own transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Client starts runs, waits for their results, reads and cancels them.
// It is safe for concurrent use. Close it when done: waiting on runs starts
// one shared LISTEN connection, which Close ends.
type Client struct {
	pool   *pgxpool.Pool
	logger *slog.Logger

	mu      sync.Mutex
	waiters map[RunID]map[chan struct{}]struct{}
	stop    context.CancelFunc // stops the listener; nil until the first Wait
	done    chan struct{}      // closed when the listener has stopped
	closed  bool
	synced  map[string]bool // flows this client has made sure exist
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithClientLogger sets the logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *Client) { c.logger = l }
}

// NewClient returns a client using pool.
func NewClient(pool *pgxpool.Pool, opts ...ClientOption) *Client {
	c := &Client{pool: pool, logger: slog.Default(), waiters: map[RunID]map[chan struct{}]struct{}{}, synced: map[string]bool{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Close stops the client's listener. Waits in progress return an error.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	stop, done := c.stop, c.done
	for _, set := range c.waiters {
		for ch := range set {
			signal(ch)
		}
	}
	c.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// StartFlow starts a run of the flow with the given slug and JSON input.
func (c *Client) StartFlow(ctx context.Context, flow string, input json.RawMessage) (RunID, error) {
	return c.StartFlowTx(ctx, c.pool, flow, input)
}

// StartFlowTx is StartFlow inside the caller's transaction (or on any
// Querier): the run exists only if that transaction commits.
func (c *Client) StartFlowTx(ctx context.Context, q Querier, flow string, input json.RawMessage) (RunID, error) {
	ids, err := c.StartFlowsTx(ctx, q, flow, []json.RawMessage{input})
	if err != nil {
		return RunID{}, err
	}
	return ids[0], nil
}

// StartFlows starts one run per input in a single statement and returns
// their ids in input order. Either all runs start or none.
func (c *Client) StartFlows(ctx context.Context, flow string, inputs []json.RawMessage) ([]RunID, error) {
	return c.StartFlowsTx(ctx, c.pool, flow, inputs)
}

// StartFlowsTx is StartFlows inside the caller's transaction.
func (c *Client) StartFlowsTx(ctx context.Context, q Querier, flow string, inputs []json.RawMessage) ([]RunID, error) {
	if !ValidSlug(flow) {
		return nil, fmt.Errorf("pgflow: start %q: invalid flow slug (slugs match %s): %w", flow, slugPattern, ErrNotFound)
	}
	texts := make([]string, len(inputs))
	for i, in := range inputs {
		if len(in) == 0 {
			in = json.RawMessage("null")
		}
		if err := checkJSON(in); err != nil {
			return nil, fmt.Errorf("pgflow: start %q: input %d: %w: %w", flow, i, err, ErrInvalidInput)
		}
		texts[i] = string(in)
	}
	var ids [][16]byte
	if err := q.QueryRow(ctx, startRunsSQL, flow, texts, nil).Scan(&ids); err != nil {
		return nil, mapError(fmt.Sprintf("pgflow: start %q", flow), err)
	}
	out := make([]RunID, len(ids))
	for i, id := range ids {
		out[i] = RunID(id)
	}
	return out, nil
}

// EnsureFlows makes the database hold the given flows (see the package
// function EnsureFlows), so that runs of them can start before any worker
// has synced them.
func (c *Client) EnsureFlows(ctx context.Context, specs ...FlowSpec) error {
	if err := EnsureFlows(ctx, c.pool, specs...); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range specs {
		c.synced[s.Slug] = true
	}
	return nil
}

// ensureFlow makes sure a typed flow exists before its first start through
// this client (see EnsureFlows), so that runs can start before any worker
// has synced the flow. It runs on the pool, not in the caller's transaction.
func (c *Client) ensureFlow(ctx context.Context, spec FlowSpec) error {
	c.mu.Lock()
	done := c.synced[spec.Slug]
	c.mu.Unlock()
	if done {
		return nil
	}
	if err := EnsureFlows(ctx, c.pool, spec); err != nil {
		// A role that may only start runs cannot sync flows: start anyway,
		// and let the database say whether the flow exists.
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			return err
		}
	}
	c.mu.Lock()
	c.synced[spec.Slug] = true
	c.mu.Unlock()
	return nil
}

// GetRun reads a run with its step states. An unknown id gives ErrNotFound.
func (c *Client) GetRun(ctx context.Context, id RunID) (*RunInfo, error) {
	var raw []byte
	if err := c.pool.QueryRow(ctx, getRunSQL, [16]byte(id)).Scan(&raw); err != nil {
		return nil, mapError("pgflow: get run "+id.String(), err)
	}
	if raw == nil {
		return nil, fmt.Errorf("pgflow: get run %s: %w", id, ErrNotFound)
	}
	var info RunInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, fmt.Errorf("pgflow: get run %s: decode: %w", id, err)
	}
	return &info, nil
}

// CancelRun cancels a started run: its queued tasks leave the queue, the
// handlers running its tasks see their context cancelled, and late results
// change nothing. It reports whether the run was still started; an unknown
// id gives ErrNotFound.
func (c *Client) CancelRun(ctx context.Context, id RunID) (bool, error) {
	var cancelled bool
	if err := c.pool.QueryRow(ctx, cancelRunSQL, [16]byte(id)).Scan(&cancelled); err != nil {
		return false, mapError("pgflow: cancel run "+id.String(), err)
	}
	return cancelled, nil
}

// WaitRun waits until the run ends and returns its output (a JSON object
// keyed by leaf step slug). A run that failed or was cancelled gives a
// *RunError (errors.Is ErrRunFailed / ErrRunCancelled). It does not poll:
// it sleeps until the database notifies that the run ended, and survives
// the database restarting meanwhile.
func (c *Client) WaitRun(ctx context.Context, id RunID) (json.RawMessage, error) {
	ch, err := c.subscribe(id)
	if err != nil {
		return nil, err
	}
	defer c.unsubscribe(id, ch)
	b := newBackoff()
	for {
		res, err := c.result(ctx, id)
		switch {
		case err == nil && res.status == RunCompleted:
			return res.output, nil
		case err == nil && res.status != RunStarted:
			return nil, res.err(id)
		case err != nil && !transient(err):
			return nil, mapError("pgflow: wait for run "+id.String(), err)
		case err != nil:
			c.logger.Warn("pgflow: waiting for a run: database unavailable; retrying", "run_id", id.String(), "error", err)
			if !b.wait(ctx) {
				return nil, fmt.Errorf("pgflow: wait for run %s: %w", id, ctx.Err())
			}
			continue
		}
		b.reset()
		select {
		case <-ch:
			if c.isClosed() {
				return nil, fmt.Errorf("pgflow: wait for run %s: client closed", id)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("pgflow: wait for run %s: %w", id, ctx.Err())
		}
	}
}

func (c *Client) result(ctx context.Context, id RunID) (runResult, error) {
	var r runResult
	var status string
	err := c.pool.QueryRow(ctx, runResultSQL, [16]byte(id)).Scan(&r.flow, &status, &r.output, &r.errStep, &r.errIndex, &r.errDetail)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("run %s: %w", id, ErrNotFound)
	}
	r.status = RunStatus(status)
	return r, err
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// subscribe registers interest in a run's end, starting the shared listener
// on first use.
func (c *Client) subscribe(id RunID) (chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("pgflow: client closed")
	}
	if c.stop == nil {
		ctx, stop := context.WithCancel(context.Background())
		c.stop, c.done = stop, make(chan struct{})
		l := &listener{
			config:   c.pool.Config().ConnConfig.Copy(),
			channels: []string{channelRuns},
			logger:   c.logger,
			onNotify: c.notified,
			onListen: c.wakeAll,
		}
		go func() {
			defer close(c.done)
			l.run(ctx)
		}()
	}
	ch := make(chan struct{}, 1)
	if c.waiters[id] == nil {
		c.waiters[id] = map[chan struct{}]struct{}{}
	}
	c.waiters[id][ch] = struct{}{}
	return ch, nil
}

func (c *Client) unsubscribe(id RunID, ch chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.waiters[id], ch)
	if len(c.waiters[id]) == 0 {
		delete(c.waiters, id)
	}
}

// notified wakes the waiters of the runs a notification names.
func (c *Client) notified(n *pgconn.Notification) {
	ended, ok := parseRunsPayload(n.Payload)
	if !ok {
		c.wakeAll()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ended.RunIDs {
		for ch := range c.waiters[id] {
			signal(ch)
		}
	}
}

// wakeAll makes every waiter look at its run again (after a reconnect, or
// a notification it could not read).
func (c *Client) wakeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, set := range c.waiters {
		for ch := range set {
			signal(ch)
		}
	}
}

// runsPayload is the payload of a pgflow_runs notification.
type runsPayload struct {
	Status RunStatus `json:"status"`
	RunIDs []RunID   `json:"run_ids"`
}

func parseRunsPayload(s string) (runsPayload, bool) {
	var p runsPayload
	err := json.Unmarshal([]byte(s), &p)
	return p, err == nil
}

// signal does a non-blocking send on a 1-buffered channel.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
