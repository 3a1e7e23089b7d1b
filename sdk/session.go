package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// session is one Run of a Worker: the claim loop, the handlers in flight,
// the result flusher and the background loops.
type session struct {
	w      *Worker
	opts   WorkerOptions
	logger *slog.Logger
	debug  bool // whether the logger takes Debug records (per-task logs cost allocations)
	regs   map[stepKey]*registration

	// The claim arguments, one entry per registered step, sorted.
	flowSlugs []string
	stepSlugs []string
	withRun   []bool
	flowSet   map[string]bool

	// handlerCtx is the parent of every handler's context; it is cancelled
	// when the shutdown stops waiting for handlers.
	handlerCtx context.Context
	stopAll    context.CancelCauseFunc
	// bgCtx lives as long as the background loops (listener, heartbeat).
	bgCtx context.Context

	// idle hands a task's handler to a goroutine that has finished its
	// last one (goroutines are reused: a new one would grow its stack anew
	// for every task); retire, closed when the session ends, ends them, as
	// does a while without work.
	idle        chan func()
	retire      chan struct{}
	handlerIdle time.Duration // how long a handler goroutine waits for its next task
	handlers    atomic.Int32  // handler goroutines alive

	mu       sync.Mutex
	inflight map[*inflight]struct{} // the handlers running
	// ended remembers, for a while, runs the worker heard have ended: a
	// claim racing the end can still hand out one of their tasks.
	ended    map[RunID]time.Time
	running  int // occupied handler slots
	reserved int // slots held for a claim in flight
	// wakeOnReturn asks for the claim loop to be woken when the reserved
	// slots are given back (see reserveForLoop).
	wakeOnReturn bool
	drained      chan struct{} // signalled when no handler runs and no claim is in flight
	// claiming is true while the claim loop runs; results are reported
	// together with a claim only then.
	claiming atomic.Bool

	turns atomic.Int64 // claims made, from the claim loop and the reporters
	// The claim loop's last answer of next_visible_at (nil: nothing
	// pending), when it asked and how long it trusts an answer; retried
	// says that this worker has queued retries since, which the answer
	// does not know of.
	visibleAt    *time.Time
	visibleAsked time.Time
	visibleReuse time.Duration
	retried      atomic.Bool
	wake         chan struct{} // wakes the claim loop: tasks may be claimable
	freed        chan struct{} // wakes the claim loop: a slot freed
	// results holds a queue of finished tasks per reporter. The results of
	// one step of one run always go to the same reporter: reports of a
	// fanout's tasks would otherwise queue for the same step state, while
	// the results of different runs are reported side by side.
	results   []chan result
	seed      maphash.Seed
	stopFlush chan struct{} // closed when no more results will be produced
	flushDone chan struct{} // closed when every flusher has exited
}

type inflight struct {
	task      *Task
	cancel    context.CancelFunc
	started   time.Time
	deadline  time.Time
	timeout   time.Duration
	abandoned bool // reported or released already; the handler's result is dropped
	runEnded  bool // cancelled because its run ended; the handler's result is dropped
}

// result is what the flusher reports for one task attempt.
type result struct {
	task      *Task
	output    []byte // a completion
	err       error  // a failure
	permanent bool
	release   bool // hand the task back without counting an attempt
}

var errShutdown = errors.New("pgflow: worker shutting down")

const (
	maxFlush = 500 // results per statement
	// nextVisibleReuse is how long the claim loop trusts an answer of
	// next_visible_at (see untilNextVisible).
	nextVisibleReuse = 100 * time.Millisecond
	maxErrorMessage  = 16 * 1024 // bytes of an error message kept
)

func newSession(w *Worker) *session {
	s := &session{
		w:           w,
		opts:        w.opts,
		logger:      w.opts.Logger,
		debug:       w.opts.Logger.Enabled(context.Background(), slog.LevelDebug),
		regs:        w.regs,
		flowSet:     map[string]bool{},
		inflight:    map[*inflight]struct{}{},
		ended:       map[RunID]time.Time{},
		drained:     make(chan struct{}, 1),
		wake:        make(chan struct{}, 1),
		freed:       make(chan struct{}, 1),
		seed:        maphash.MakeSeed(),
		idle:        make(chan func()),
		retire:      make(chan struct{}),
		handlerIdle: handlerIdle,
		stopFlush:   make(chan struct{}),
		flushDone:   make(chan struct{}),

		visibleReuse: nextVisibleReuse,
	}
	keys := make([]stepKey, 0, len(w.regs))
	for k := range w.regs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b stepKey) int {
		if a.flow != b.flow {
			return compareStrings(a.flow, b.flow)
		}
		return compareStrings(a.step, b.step)
	})
	for _, k := range keys {
		s.flowSlugs = append(s.flowSlugs, k.flow)
		s.stepSlugs = append(s.stepSlugs, k.step)
		s.withRun = append(s.withRun, w.regs[k].opts.RunInput)
		s.flowSet[k.flow] = true
	}
	for range w.opts.Reporters {
		s.results = append(s.results, make(chan result, w.opts.Concurrency))
	}
	s.handlerCtx, s.stopAll = context.WithCancelCause(context.Background())
	return s
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// run works until ctx is done, then shuts down.
func (s *session) run(ctx context.Context) {
	bgCtx, stopBackground := context.WithCancel(context.Background())
	s.bgCtx = bgCtx
	var bg sync.WaitGroup
	l := &listener{
		config:   s.w.pool.Config().ConnConfig.Copy(),
		channels: []string{channelTasks, channelRuns},
		logger:   s.logger,
		onNotify: s.notified,
		onListen: func() {
			signal(s.wake)
			s.checkEndedRuns(bgCtx)
		},
	}
	bg.Go(func() { l.run(bgCtx) })
	bg.Go(func() { s.heartbeatLoop(bgCtx) })
	bg.Go(func() { s.sweepLoop(bgCtx) })
	flushCtx, stopFlushing := context.WithCancel(context.Background())
	var flushers sync.WaitGroup
	for _, results := range s.results {
		flushers.Go(func() { s.flushLoop(flushCtx, results) })
	}
	go func() {
		flushers.Wait()
		close(s.flushDone)
	}()

	s.logger.Info("pgflow: worker started", "worker_id", s.w.ID().String(), "concurrency", s.opts.Concurrency,
		"steps", len(s.stepSlugs))
	s.claiming.Store(true)
	s.claimLoop(ctx)
	s.claiming.Store(false)

	// Shutdown: stop claiming (done), wait for handlers, then take back
	// what is still running and report everything.
	s.logger.Info("pgflow: worker stopping", "worker_id", s.w.ID().String(), "running", s.runningCount())
	s.waitDrained(s.opts.ShutdownTimeout)
	s.releaseRemaining()
	close(s.stopFlush)
	select {
	case <-s.flushDone:
	case <-time.After(s.opts.ShutdownTimeout):
		stopFlushing() // the database stayed away; the leases will expire
		<-s.flushDone
	}
	stopFlushing()
	// The heartbeat stops before the stop is recorded: a heartbeat after
	// it would mark the worker alive again.
	stopBackground()
	bg.Wait()
	s.markStopped()
	s.stopAll(errShutdown)
	close(s.retire)
	s.logger.Info("pgflow: worker stopped", "worker_id", s.w.ID().String())
}

// claimLoop claims tasks whenever there are free slots and tasks may be
// claimable, until ctx is done.
func (s *session) claimLoop(ctx context.Context) {
	b := newBackoff()
	timer := time.NewTimer(0)
	defer timer.Stop()
	// backlog: the last claim got every task it asked for, so more are
	// probably waiting. Only a claim that comes back short ends it.
	backlog := false
	for {
		if ctx.Err() != nil {
			return
		}
		// With a backlog, wait for a few slots to free up so that claims
		// come in batches rather than one task per statement.
		threshold := 1
		if backlog {
			threshold = max(1, min(s.opts.MaxClaim, s.opts.Concurrency/4))
		}
		wait := s.opts.PollInterval
		if n := s.reserveForLoop(threshold); n > 0 {
			claimed, err := s.claim(ctx, n)
			if err != nil {
				claimed = nil // the tasks of a failed claim go back when their leases expire
			}
			s.startClaimed(claimed, n)
			switch {
			case err != nil && ctx.Err() != nil:
				return
			case err != nil:
				s.logger.Warn("pgflow: claiming tasks failed; retrying", "error", err)
				b.wait(ctx)
				continue
			}
			b.reset()
			backlog = len(claimed) == n
			if backlog {
				continue
			}
			// Nothing more is claimable now: sleep until something becomes
			// claimable (a delayed start or retry, an expiring lease), a
			// notification arrives, or the poll interval passes.
			wait = s.untilNextVisible(ctx)
		} else if backlog {
			wait = 2 * time.Millisecond
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		// A freed slot matters only while there is a backlog; otherwise the
		// queue is empty and only a notification or a timer brings work.
		freed := s.freed
		if !backlog {
			freed = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-freed:
		case <-timer.C:
		}
	}
}

// claimed is one row of claim_tasks.
type claimed struct {
	task    *Task
	timeout time.Duration
}

// reserve holds free handler slots for a claim: as many as are free, up
// to MaxClaim, or none when fewer than least are free. The claim loop and
// the flusher both claim; reserving keeps them from handing out the same
// slots. startClaimed gives the reservation back.
func (s *session) reserve(least int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserveLocked(least)
}

func (s *session) reserveLocked(least int) int {
	free := s.opts.Concurrency - s.running - s.reserved
	if free < max(least, 1) {
		return 0
	}
	n := min(free, s.opts.MaxClaim)
	s.reserved += n
	return n
}

// reserveForLoop is reserve for the claim loop. When slots it wants are
// held for a report's claim in flight, it gets none; that claim may have
// looked at the queue before the tasks the loop was woken for were queued,
// so the loop is woken again once the slots are given back.
func (s *session) reserveForLoop(least int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.reserveLocked(least)
	if n == 0 && s.reserved > 0 {
		s.wakeOnReturn = true
	}
	return n
}

// taskGroup is the deadline shared by the tasks of one claim that have the
// same timeout: one timer for all of them rather than one per task (each
// task's context, cancellable on its own, derives from the group's). The
// last task of a group to finish releases it.
type taskGroup struct {
	ctx      context.Context
	cancel   context.CancelFunc
	timeout  time.Duration
	deadline time.Time
	left     atomic.Int32 // tasks of the group not yet finished
}

// done records that one of the group's tasks finished.
func (g *taskGroup) done() {
	if g.left.Add(-1) == 0 {
		g.cancel()
	}
}

// startClaimed starts the tasks of a claim made with n reserved slots
// and returns the reservation.
func (s *session) startClaimed(claimed []claimed, n int) {
	now := time.Now()
	// Every group counts its tasks before any starts: a task finishing
	// early must not release its group while others are still to join.
	var groups []*taskGroup // by timeout; a claim's steps are few
	of := make([]*taskGroup, len(claimed))
	for i, c := range claimed {
		j := slices.IndexFunc(groups, func(g *taskGroup) bool { return g.timeout == c.timeout })
		if j < 0 {
			g := &taskGroup{timeout: c.timeout, deadline: now.Add(c.timeout)}
			g.ctx, g.cancel = context.WithDeadline(s.handlerCtx, g.deadline)
			groups, j = append(groups, g), len(groups)
		}
		of[i] = groups[j]
		groups[j].left.Add(1)
	}
	for i, c := range claimed {
		s.start(c, of[i], now)
	}
	s.mu.Lock()
	s.reserved -= n
	if s.running == 0 && s.reserved == 0 {
		signal(s.drained)
	}
	if s.wakeOnReturn && s.reserved == 0 {
		s.wakeOnReturn = false
		signal(s.wake)
	}
	s.mu.Unlock()
}

// claimArgs are the arguments of claimSQL for n tasks. Each claim gets the
// next turn: the worker's steps take turns at being served first.
func (s *session) claimArgs(n int) []any {
	return []any{s.w.id, s.flowSlugs, s.stepSlugs, n, s.withRun, s.opts.LeaseGrace, s.turns.Add(1)}
}

// claim claims up to n tasks. A shutdown (ctx done) does not interrupt a
// claim in flight at once: the claim may have committed already, and its
// tasks would then stay leased to this worker, unworked, until their
// leases expired. It gets the shutdown timeout to finish; its tasks start,
// and the shutdown waits for them like for any other.
func (s *session) claim(ctx context.Context, n int) ([]claimed, error) {
	claimCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(s.opts.ShutdownTimeout, cancel) })
	defer stop()
	rows, err := s.w.pool.Query(claimCtx, claimSQL, s.claimArgs(n)...)
	if err != nil {
		return nil, err
	}
	return scanClaimed(rows, n, nil)
}

// scanClaimed reads the rows of a claim of up to n tasks: of claimSQL
// (applied nil), or of completeClaimSQL, whose first column (how many
// completions applied) goes to applied, and whose row without a task (when
// none was claimed) carries only that.
func scanClaimed(rows pgx.Rows, n int, applied *int) ([]claimed, error) {
	defer rows.Close()
	var (
		out                  = make([]claimed, 0, n)
		run                  [16]byte
		step, flow           string
		index, attempt       int
		timeout              time.Duration
		runInput, deps, item []byte
	)
	dest := []any{&run, &step, &index, &attempt, &timeout, &runInput, &deps, &item, &flow}
	var countOnly []any
	if applied != nil {
		dest = append([]any{applied}, dest...)
		countOnly = make([]any, len(dest))
		countOnly[0] = applied
	}
	for rows.Next() {
		if applied != nil && rows.RawValues()[1] == nil {
			if err := rows.Scan(countOnly...); err != nil {
				return nil, err
			}
			continue
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		out = append(out, claimed{
			task: &Task{RunID: RunID(run), Flow: flow, Step: step, Index: index, Attempt: attempt,
				runInput: cloneBytes(runInput), deps: cloneBytes(deps), item: cloneBytes(item)},
			timeout: timeout,
		})
	}
	return out, rows.Err()
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return slices.Clone(b)
}

// untilNextVisible asks when the next task of these steps becomes
// claimable (a delayed retry or start, or an expiring lease), capped at the
// poll interval. An answer younger than visibleReuse that still lies ahead
// is used again instead of asking: a worker fed one task at a time (a
// chain of steps, a trickle of runs) would otherwise ask after nearly
// every claim. A reused answer does not know of tasks delayed since it was
// given (a start delay, another worker's retry), so the wait then ends
// when the answer expires, and the loop asks again; retries this worker
// queued make it ask at once.
func (s *session) untilNextVisible(ctx context.Context) time.Duration {
	now := time.Now()
	reuse := now.Sub(s.visibleAsked) < s.visibleReuse && (s.visibleAt == nil || s.visibleAt.After(now))
	if s.retried.Swap(false) || !reuse {
		var next *time.Time
		if err := s.w.pool.QueryRow(ctx, nextVisibleSQL, s.flowSlugs, s.stepSlugs).Scan(&next); err != nil {
			s.visibleAsked = time.Time{}
			return s.opts.PollInterval
		}
		s.visibleAt, s.visibleAsked, reuse = next, now, false
	}
	wait := s.opts.PollInterval
	if s.visibleAt != nil {
		wait = min(max(time.Until(*s.visibleAt), time.Millisecond), wait)
	}
	if reuse {
		wait = min(wait, max(s.visibleAsked.Add(s.visibleReuse).Sub(now), time.Millisecond))
	}
	return wait
}

// start runs a claimed task's handler on a handler goroutine, in its
// group's context; the task of a run known to have ended is handed back
// instead (the database then cancels it).
func (s *session) start(c claimed, g *taskGroup, now time.Time) {
	s.mu.Lock()
	_, ended := s.ended[c.task.RunID]
	s.mu.Unlock()
	if ended {
		g.done()
		s.logger.Debug("pgflow: task dropped: its run ended", taskAttrs(c.task)...)
		s.deliver(result{task: c.task, release: true})
		return
	}
	reg := s.regs[stepKey{c.task.Flow, c.task.Step}]
	ctx, cancel := context.WithCancel(context.WithValue(g.ctx, taskContextKey{}, c.task))
	inf := &inflight{task: c.task, cancel: cancel, started: now, deadline: g.deadline, timeout: c.timeout}
	s.mu.Lock()
	s.inflight[inf] = struct{}{}
	s.running++
	s.mu.Unlock()
	if s.debug {
		s.logger.Debug("pgflow: task started", taskAttrs(c.task)...)
	}
	s.launch(func() {
		defer g.done()
		defer cancel()
		out, err := call(ctx, reg.handler, c.task)
		s.finish(inf, ctx, out, err)
	})
}

// launch runs f on an idle handler goroutine, or on a new one when none is
// idle.
func (s *session) launch(f func()) {
	select {
	case s.idle <- f:
	default:
		go s.handlerLoop(f)
	}
}

// handlerIdle is how long a handler goroutine waits for its next task
// before it ends.
const handlerIdle = 10 * time.Second

// handlerLoop runs f, then whatever launch hands it, until it has waited
// s.handlerIdle for a task or the session ends.
func (s *session) handlerLoop(f func()) {
	s.handlers.Add(1)
	defer s.handlers.Add(-1)
	idle := time.NewTimer(s.handlerIdle)
	defer idle.Stop()
	for {
		// A handler that set profiler labels on its goroutine leaves them
		// to nobody else.
		pprof.SetGoroutineLabels(s.handlerCtx)
		f()
		idle.Reset(s.handlerIdle)
		select {
		case f = <-s.idle:
		case <-idle.C:
			return
		case <-s.retire:
			return
		}
	}
}

func taskAttrs(t *Task, more ...any) []any {
	return append([]any{"run_id", t.RunID.String(), "flow", t.Flow, "step", t.Step, "index", t.Index, "attempt", t.Attempt}, more...)
}

// call runs a handler, turning a panic into an error with its stack.
func call(ctx context.Context, h Handler, t *Task) (out any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return h(ctx, t)
}

// finish turns a handler's return into a result for the flusher.
func (s *session) finish(inf *inflight, ctx context.Context, out any, err error) {
	s.mu.Lock()
	if inf.abandoned {
		s.mu.Unlock()
		return
	}
	delete(s.inflight, inf)
	runEnded := inf.runEnded
	s.mu.Unlock()
	defer s.freeSlot()

	t := inf.task
	elapsed := time.Since(inf.started)
	if runEnded {
		s.logger.Debug("pgflow: task dropped: its run ended", taskAttrs(t, "duration", elapsed)...)
		return
	}
	r := result{task: t}
	if err == nil {
		raw, merr := json.Marshal(out)
		switch {
		case merr != nil:
			err = Permanent(fmt.Errorf("encode the output of step %q (task %d) as JSON: %w", t.Step, t.Index, merr))
		case len(raw) > s.opts.MaxOutputBytes:
			err = Permanent(fmt.Errorf("the output of step %q (task %d) is %d bytes of JSON, over the limit of %d (WorkerOptions.MaxOutputBytes)",
				t.Step, t.Index, len(raw), s.opts.MaxOutputBytes))
		case bytes.Contains(raw, []byte(`\u0000`)) && containsNUL(raw):
			err = Permanent(fmt.Errorf(`the output of step %q (task %d) holds the character \u0000, which Postgres cannot store in jsonb`,
				t.Step, t.Index))
		default:
			r.output = raw
		}
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("timeout: step %q (task %d) did not finish within %s: %w", t.Step, t.Index, inf.timeout, err)
		}
		r.err, r.permanent = err, IsPermanent(err)
		s.logger.Warn("pgflow: task failed", taskAttrs(t, "duration", elapsed, "permanent", r.permanent, "error", err)...)
	} else {
		if s.debug {
			s.logger.Debug("pgflow: task completed", taskAttrs(t, "duration", elapsed)...)
		}
	}
	s.deliver(r)
}

// deliver hands a result to the flusher (or drops it once the flusher has
// gone, at the very end of a shutdown).
func (s *session) deliver(r result) {
	select {
	case s.results[s.reporterOf(r.task)] <- r:
	case <-s.flushDone:
	}
}

// reporterOf returns the reporter of a task's results.
func (s *session) reporterOf(t *Task) int {
	if len(s.results) == 1 {
		return 0
	}
	h := maphash.Comparable(s.seed, runStep{t.RunID, t.Step})
	return int(h % uint64(len(s.results)))
}

type runStep struct {
	run  RunID
	step string
}

func (s *session) freeSlot() {
	s.mu.Lock()
	s.running--
	if s.running == 0 && s.reserved == 0 {
		signal(s.drained)
	}
	s.mu.Unlock()
	signal(s.freed)
}

// busy reports whether a handler runs or a claim is in flight.
func (s *session) busy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running > 0 || s.reserved > 0
}

func (s *session) runningCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// waitDrained waits until no handler runs and no claim is in flight, or
// the timeout. A report's claim can still be in flight when the claim loop
// stops: its tasks start when it returns, and are waited for like the
// others (started after the handlers were cancelled, they would fail).
func (s *session) waitDrained(timeout time.Duration) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for s.busy() {
		select {
		case <-s.drained:
		case <-deadline.C:
			return
		}
	}
}

// releaseRemaining cancels the handlers still running at the end of the
// shutdown wait and hands their tasks back to the queue, so that another
// worker takes them at once instead of after their leases expire.
func (s *session) releaseRemaining() {
	s.mu.Lock()
	var tasks []*Task
	for inf := range s.inflight {
		inf.abandoned = true
		tasks = append(tasks, inf.task)
		s.running--
	}
	clear(s.inflight)
	s.mu.Unlock()
	s.stopAll(errShutdown)
	if len(tasks) == 0 {
		return
	}
	s.logger.Warn("pgflow: handlers still running at shutdown; releasing their tasks", "count", len(tasks))
	for _, t := range tasks {
		s.deliver(result{task: t, release: true})
	}
}

// sweepLoop gives up on handlers that ignore their context: past their
// deadline plus half the lease grace, their attempt is reported as a
// timeout and their slot freed (their eventual result is dropped).
func (s *session) sweepLoop(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			var late []*inflight
			s.mu.Lock()
			for inf := range s.inflight {
				if now.After(inf.deadline.Add(s.opts.LeaseGrace / 2)) {
					inf.abandoned = true
					delete(s.inflight, inf)
					late = append(late, inf)
				}
			}
			s.mu.Unlock()
			for _, inf := range late {
				err := fmt.Errorf("timeout: step %q (task %d) did not finish within %s, and its handler ignored the cancellation",
					inf.task.Step, inf.task.Index, inf.timeout)
				s.logger.Error("pgflow: handler ignores its context; giving up on it", taskAttrs(inf.task, "error", err)...)
				s.deliver(result{task: inf.task, err: err})
				s.freeSlot()
			}
		}
	}
}

// notified handles a notification from the listener.
func (s *session) notified(n *pgconn.Notification) {
	if !isRunsNotification(n) {
		if s.flowSet[n.Payload] {
			signal(s.wake)
		}
		return
	}
	p, ok := parseRunsPayload(n.Payload)
	if !ok || p.Status == RunCompleted {
		return
	}
	// Anyone who can connect can send a notification: believe the database,
	// not the payload.
	s.cancelRuns(s.endedAmong(s.bgCtx, p.RunIDs))
}

// endedMemory is how long the worker remembers that a run ended.
const endedMemory = time.Minute

// cancelRuns cancels the handlers of runs that ended, and remembers the runs.
func (s *session) cancelRuns(ids []RunID) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, at := range s.ended {
		if now.Sub(at) > endedMemory {
			delete(s.ended, id)
		}
	}
	for _, id := range ids {
		s.ended[id] = now
	}
	for inf := range s.inflight {
		if _, ok := s.ended[inf.task.RunID]; ok {
			inf.runEnded = true
			inf.cancel()
		}
	}
}

// checkEndedRuns looks up whether the runs of running handlers ended while
// a notification could have been missed.
func (s *session) checkEndedRuns(ctx context.Context) {
	s.mu.Lock()
	var ids []RunID
	for inf := range s.inflight {
		ids = append(ids, inf.task.RunID)
	}
	s.mu.Unlock()
	if ended := s.endedAmong(ctx, ids); len(ended) > 0 {
		s.cancelRuns(ended)
	}
}

// endedAmong returns the runs among ids that have ended, as the database
// says.
func (s *session) endedAmong(ctx context.Context, ids []RunID) []RunID {
	if len(ids) == 0 {
		return nil
	}
	raw := make([][16]byte, len(ids))
	for i, id := range ids {
		raw[i] = [16]byte(id)
	}
	rows, err := s.w.pool.Query(ctx, endedRunsSQL, raw)
	if err != nil {
		if ctx.Err() == nil {
			s.logger.Warn("pgflow: checking which runs ended failed", "error", err)
		}
		return nil
	}
	ended, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (RunID, error) {
		var id [16]byte
		err := r.Scan(&id)
		return RunID(id), err
	})
	if err != nil {
		if ctx.Err() == nil {
			s.logger.Warn("pgflow: checking which runs ended failed", "error", err)
		}
		return nil
	}
	return ended
}

// heartbeatLoop records that the worker is alive, and double-checks for
// runs that ended.
func (s *session) heartbeatLoop(ctx context.Context) {
	flows := sortedKeys(s.flowSet)
	host := hostname()
	tick := time.NewTicker(s.opts.HeartbeatInterval)
	defer tick.Stop()
	for {
		if _, err := s.w.pool.Exec(ctx, heartbeatSQL, s.w.id, flows, host); err != nil && ctx.Err() == nil {
			s.logger.Warn("pgflow: worker heartbeat failed", "error", err)
		}
		s.checkEndedRuns(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *session) markStopped() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.w.pool.Exec(ctx, stoppedSQL, s.w.id); err != nil {
		s.logger.Warn("pgflow: recording the worker's stop failed", "error", err)
	}
}
