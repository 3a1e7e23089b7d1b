package schema_test

// Tests of the SQL core under forced interleavings and less common
// shapes: lock-order cycles that once deadlocked, races between claims,
// completions, failures and run ends, and batches spanning runs and steps.
//
// Interleavings are forced with dedicated connections: a "blocker"
// transaction holds a row lock at a chosen point, the statement under test
// is started on its own connection and the test waits (polling
// pg_stat_activity, with a deadline) until that backend is blocked on a
// lock before it moves on.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sideConn is a dedicated connection (outside the engine's small pool) with
// its backend pid.
type sideConn struct {
	e   *engine
	c   *pgx.Conn
	pid int
}

func (e *engine) sideConn() *sideConn {
	e.t.Helper()
	c, err := pgx.Connect(e.ctx, e.pool.Config().ConnString())
	if err != nil {
		e.t.Fatalf("connect: %v", err)
	}
	e.t.Cleanup(func() { c.Close(context.Background()) })
	r := &sideConn{e: e, c: c}
	if err := c.QueryRow(e.ctx, "SELECT pg_backend_pid()").Scan(&r.pid); err != nil {
		e.t.Fatalf("pg_backend_pid: %v", err)
	}
	return r
}

func (r *sideConn) exec(sql string, args ...any) {
	r.e.t.Helper()
	if _, err := r.c.Exec(r.e.ctx, sql, args...); err != nil {
		r.e.t.Fatalf("%s: %v", sql, err)
	}
}

// sideResult is the outcome of a statement run in the background: its one
// value as text, or its error.
type sideResult struct {
	val string
	err error
}

// goQuery runs a one-row, one-column statement in the background; the value
// is read as text (cast it in the SQL).
func (r *sideConn) goQuery(sql string, args ...any) <-chan sideResult {
	ch := make(chan sideResult, 1)
	go func() {
		var v *string
		err := r.c.QueryRow(r.e.ctx, sql, args...).Scan(&v)
		res := sideResult{err: err}
		if v != nil {
			res.val = *v
		}
		ch <- res
	}()
	return ch
}

func (r *sideConn) goQueryCtx(ctx context.Context, sql string, args ...any) <-chan sideResult {
	ch := make(chan sideResult, 1)
	go func() {
		var v *string
		err := r.c.QueryRow(ctx, sql, args...).Scan(&v)
		res := sideResult{err: err}
		if v != nil {
			res.val = *v
		}
		ch <- res
	}()
	return ch
}

// completeHolding starts complete_tasks(batch) on a new connection and waits
// until it blocks on a lock (the caller arranged one, e.g. a blocker on a
// later task of the batch) while holding the row of task held. Which task
// row the completion's UPDATE reaches first depends on the plan (e.g. the
// order of a hash bucket's chain), so when the completion is blocked without
// holding held, it is cancelled and started again with the batch reversed.
func (e *engine) completeHolding(batch []task, outputs []string, held task) <-chan sideResult {
	e.t.Helper()
	probe := "SELECT 1 FROM pgflow.step_tasks WHERE run_id = $1::uuid AND step_slug = $2 AND task_index = $3 FOR UPDATE NOWAIT"
	for attempt := 0; attempt < 2; attempt++ {
		c := e.sideConn()
		ctx, cancel := context.WithCancel(e.ctx)
		ch := c.goQueryCtx(ctx, sideCompleteSQL, completeArgs(batch, outputs...)...)
		e.waitBlocked(c.pid)
		if e.rowLocked(probe, held.RunID, held.Step, held.Index) {
			e.t.Cleanup(cancel)
			return ch
		}
		cancel()
		if r := e.await(ch); r.err == nil {
			e.t.Fatalf("cancelled completion finished: %q", r.val)
		}
		batch = append([]task(nil), batch...)
		outputs = append([]string(nil), outputs...)
		for i, j := 0, len(batch)-1; i < j; i, j = i+1, j-1 {
			batch[i], batch[j] = batch[j], batch[i]
			outputs[i], outputs[j] = outputs[j], outputs[i]
		}
	}
	e.t.Skip("could not make the completion lock the wanted task first")
	return nil
}

func (e *engine) await(ch <-chan sideResult) sideResult {
	e.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		e.t.Fatalf("statement did not finish within 30s")
		return sideResult{}
	}
}

// waitBlocked waits until the backend pid waits for a heavyweight lock (a
// row, tuple or transaction lock).
func (e *engine) waitBlocked(pid int) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		var blocked bool
		if err := e.pool.QueryRow(e.ctx,
			"SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&blocked); err != nil {
			e.t.Fatalf("pg_stat_activity: %v", err)
		}
		if blocked {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("backend %d did not block on a lock within 15s", pid)
}

// doneOrBlocked waits until the statement behind ch has finished (its result,
// true) or its backend pid is blocked on a lock (false).
func (e *engine) doneOrBlocked(pid int, ch <-chan sideResult) (sideResult, bool) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case r := <-ch:
			return r, true
		default:
		}
		var blocked bool
		if err := e.pool.QueryRow(e.ctx,
			"SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&blocked); err != nil {
			e.t.Fatalf("pg_stat_activity: %v", err)
		}
		if blocked {
			return sideResult{}, false
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("backend %d neither finished nor blocked within 15s", pid)
	return sideResult{}, false
}

// rowLocked reports whether some other transaction holds a lock on the rows
// selected by query (a SELECT ... FOR UPDATE NOWAIT), probing in a
// transaction that is rolled back at once.
func (e *engine) rowLocked(query string, args ...any) bool {
	e.t.Helper()
	tx, err := e.pool.Begin(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(e.ctx) //nolint:errcheck
	_, err = tx.Exec(e.ctx, query, args...)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
		return true
	}
	if err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return false
}

func isDeadlock(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40P01"
}

const sideCompleteSQL = "SELECT pgflow.complete_tasks($1::uuid[], $2, $3, $4, $5::jsonb[])::text"

// completeArgs are the arguments of sideCompleteSQL for tasks with outputs.
func completeArgs(tasks []task, outputs ...string) []any {
	var runs, steps []string
	var idx, att []int
	for _, k := range tasks {
		runs, steps = append(runs, k.RunID), append(steps, k.Step)
		idx, att = append(idx, k.Index), append(att, k.Attempt)
	}
	return []any{runs, steps, idx, att, outputs}
}

// pick returns the claimed task of step and index (of run, when not "").
func pick(t testing.TB, tasks []task, run, step string, index int) task {
	t.Helper()
	for _, k := range tasks {
		if k.Step == step && k.Index == index && (run == "" || k.RunID == run) {
			return k
		}
	}
	t.Fatalf("no claimed task %s[%d] of run %s in %+v", step, index, run, tasks)
	return task{}
}

func (e *engine) taskStatus(run, step string, index int) string {
	e.t.Helper()
	return scalar[string](e, "SELECT status FROM pgflow.step_tasks WHERE run_id = $1::uuid AND step_slug = $2 AND task_index = $3",
		run, step, index)
}

//------------------------------------------------------------------------------
// Problems
//------------------------------------------------------------------------------

// TestFastPathNoDeadlockWithSortedStepLockers: the fast path of
// complete_tasks decrements its step states inside one UPDATE ... FROM
// counted, in whatever order the plan yields them (the HashAggregate order
// of counted, driven through a nested loop), not sorted by (run_id,
// step_slug), and it keeps each one locked while it waits for the next.
// Every other party that locks several step states locks them sorted:
// cancel_run/_end_run, the complete slow path, fail_tasks, release_tasks. A
// fast-path batch over two steps q > p that happens to process q first thus
// deadlocks with any of them that already holds p:
//
//	locker:     (run row,) step p ............................ waits for q
//	fast path:  its tasks, step q (decremented), waits for p
//
// The blocker only holds p long enough for both to queue at the chosen
// points. The order is a property of the run id's hash, so each case tries
// the same 8 fixed run ids; any deadlock fails it.
func TestFastPathNoDeadlockWithSortedStepLockers(t *testing.T) {
	t.Parallel()
	lockers := []struct {
		name string
		// sql and args of the sorted locker, given the run and its claimed tasks
		stmt func(run string, tasks []task) (string, []any)
	}{
		{"cancel_run", func(run string, _ []task) (string, []any) {
			return "SELECT pgflow.cancel_run($1::uuid)::text", []any{run}
		}},
		{"complete_tasks slow path", func(run string, tasks []task) (string, []any) {
			return sideCompleteSQL, completeArgs([]task{pick(t, tasks, run, "z", 0)}, `"z"`)
		}},
		{"fail_tasks retry", func(run string, tasks []task) (string, []any) {
			b := []task{pick(t, tasks, run, "p", 1), pick(t, tasks, run, "q", 1)}
			return "SELECT pgflow.fail_tasks($1::uuid[], $2, $3, $4, '{x,x}')::text", completeArgs(b)[:4]
		}},
		{"release_tasks", func(run string, tasks []task) (string, []any) {
			b := []task{pick(t, tasks, run, "p", 1), pick(t, tasks, run, "q", 1)}
			return "SELECT pgflow.release_tasks($1::uuid[], $2, $3, $4)::text", completeArgs(b)[:4]
		}},
	}
	for _, lk := range lockers {
		t.Run(lk.name, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t)
			e.flow("fp", "", step{slug: "p", fanout: true}, step{slug: "q", fanout: true}, step{slug: "z"})
			blocker, locker, completer := e.sideConn(), e.sideConn(), e.sideConn()
			deadlocks := 0
			for i := 1; i <= 8; i++ {
				runID := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
				run := scalar[string](e, "SELECT pgflow.start_flow('fp', '[1, 2, 3]', $1::uuid)::text", runID)
				tasks := e.claim(100, "fp.p", "fp.q", "fp.z")
				p0, q0 := pick(t, tasks, run, "p", 0), pick(t, tasks, run, "q", 0)

				blocker.exec("BEGIN")
				blocker.exec("SELECT 1 FROM pgflow.step_states WHERE run_id = $1::uuid AND step_slug = 'p' FOR UPDATE", run)
				sql, args := lk.stmt(run, tasks)
				locked := locker.goQuery(sql, args...)
				e.waitBlocked(locker.pid) // waits for step p
				completed := completer.goQuery(sideCompleteSQL, completeArgs([]task{p0, q0}, `"p0"`, `"q0"`)...)
				e.waitBlocked(completer.pid) // holds its tasks (and step q if it went there first), waits for p
				blocker.exec("COMMIT")

				rl, rc := e.await(locked), e.await(completed)
				for who, err := range map[string]error{lk.name: rl.err, "complete_tasks (fast path)": rc.err} {
					if isDeadlock(err) {
						deadlocks++
						t.Errorf("run %s: %s was aborted by a deadlock: %v", run, who, err)
					} else if err != nil {
						t.Fatalf("run %s: %s: %v", run, who, err)
					}
				}
				e.exec("SELECT pgflow.cancel_run($1::uuid)", run)
			}
			t.Logf("%d of 8 runs deadlocked", deadlocks)
		})
	}
}

// TestReaperSkipsTaskBeingReported: claim_tasks reaps
// expired last attempts through fail_tasks, which locks the run row and
// the run's step states and only then the (not its own) task rows. A
// worker whose last attempt just outlived its lease reports it together
// with another task of the same fanout; its fast path locks the task rows
// first and the step state last:
//
//	completer: T0 locked ......(T1 busy for a moment)...... T1, waits for step state
//	claimer:   _reap_expired -> fail_tasks: run row, step states, waits for T0
//
// The header's rule "whoever holds a run row or a step state never waits for
// a task row of another report" does not hold for the reaper. Postgres
// aborts one of the two, so a claim (or the completion batch) fails with
// 40P01.
func TestReaperSkipsTaskBeingReported(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("reap", "max_attempts => 1", step{slug: "each", fanout: true})
	run := e.start("reap", `[1, 2, 3]`)
	tasks := e.claim(10, "reap.each")
	t0, t1 := pick(t, tasks, run, "each", 0), pick(t, tasks, run, "each", 1)
	// T0's (last) attempt outlived its lease; T1's has not.
	e.exec("UPDATE pgflow.step_tasks SET visible_at = now() - interval '1 minute' WHERE run_id = $1::uuid AND task_index = 0", run)
	e.exec("UPDATE pgflow.step_tasks SET visible_at = now() + interval '1 hour' WHERE run_id = $1::uuid AND task_index = 1", run)

	blocker, claimer := e.sideConn(), e.sideConn()
	blocker.exec("BEGIN")
	blocker.exec("SELECT 1 FROM pgflow.step_tasks WHERE run_id = $1::uuid AND task_index = 1 FOR UPDATE", run)
	completed := e.completeHolding([]task{t0, t1}, []string{`"a"`, `"b"`}, t0) // holds T0, waits for T1
	// The reaper leaves T0 to the worker reporting it: the claim neither
	// waits for it nor fails it.
	rc := e.await(claimer.goQuery("SELECT count(*)::text FROM pgflow.claim_tasks(gen_random_uuid(), '{reap}', '{each}', 10)"))
	blocker.exec("ROLLBACK")
	rf := e.await(completed)
	if isDeadlock(rf.err) || isDeadlock(rc.err) {
		t.Fatalf("deadlock between a fast-path completion and the reaper in claim_tasks: complete: %v; claim: %v", rf.err, rc.err)
	} else if rf.err != nil || rc.err != nil {
		t.Fatalf("complete: %v; claim: %v", rf.err, rc.err)
	}
	if rf.val != "2" {
		t.Fatalf("completion applied %s of 2", rf.val)
	}
	if st := e.taskStatus(run, "each", 0); st != "completed" {
		t.Fatalf("T0 is %s, want completed by its reporter", st)
	}
}

// TestClaimRacingCancelIsFencedOut: claim_tasks locks its
// tasks in one statement and updates them in the next, reading the run's
// status (unlocked) in that UPDATE's snapshot. _end_run skips the tasks a
// claim has locked ("whoever holds them finds the run ended"), but the
// claim only finds out when its UPDATE's snapshot is taken after the end
// committed. When cancel_run (or a final failure) commits while the claim's
// UPDATE runs, the claim still marks the task started and hands it to the
// worker, after cancel_run has returned true: work of a cancelled run
// starts after the cancel. Its result is fenced later (cancelled), and
// fail_task then returns 'cancelled' where it promises NULL for a run that
// has ended (fail_tasks/release_tasks likewise count it as applied).
//
// The window is forced with a test-only trigger that makes a claim's
// queued->started update wait for an advisory lock after the UPDATE's
// snapshot was taken.
func TestClaimRacingCancelIsFencedOut(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("late", "", step{slug: "a"})
	run := e.start("late", `{}`)
	e.exec(`CREATE FUNCTION public.pause_claims() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$`)
	e.exec(`CREATE TRIGGER pause_claims BEFORE UPDATE ON pgflow.step_tasks FOR EACH ROW
		WHEN (OLD.status = 'queued' AND NEW.status = 'started') EXECUTE FUNCTION public.pause_claims()`)

	holder, claimer, canceller := e.sideConn(), e.sideConn(), e.sideConn()
	holder.exec("BEGIN")
	holder.exec("SELECT pg_advisory_xact_lock(4242)")
	claimed := claimer.goQuery(`SELECT string_agg(format('%s/%s/%s', run_id, task_index, attempt), ',')
		FROM pgflow.claim_tasks(gen_random_uuid(), '{late}', '{a}', 10)`)
	e.waitBlocked(claimer.pid) // inside the claim's UPDATE: task locked, snapshot taken
	// cancel_run does not wait for claims in flight: it skips the task
	// being claimed. The claim may then hand that task out; what the engine
	// guarantees is that its report changes nothing and leaves nothing of
	// the run live (workers also drop the tasks of runs they know ended).
	rc := e.await(canceller.goQuery("SELECT pgflow.cancel_run($1::uuid)::text", run))
	holder.exec("COMMIT")
	r := e.await(claimed)
	if r.err != nil || rc.err != nil || rc.val != "true" {
		t.Fatalf("claim: %v; cancel_run: %q, %v", r.err, rc.val, rc.err)
	}
	if r.val == "" {
		return // the claim saw the cancel
	}
	k := task{RunID: run, Step: "a", Index: 0, Attempt: 1}
	if e.complete(k, `"late"`) {
		t.Error("the report of a task handed out in the race applied")
	}
	if got := e.fail(k, "late", false); got != "" {
		t.Errorf("fail_task of the cancelled run's task returned %q, want NULL", got)
	}
	if n := e.liveTasks(run); n != 0 {
		t.Errorf("the cancelled run has %d live tasks after the report", n)
	}
	if st := e.run(run).Status; st != "cancelled" {
		t.Errorf("run is %s", st)
	}
}

// TestClaimDuplicateStepPairs: a step listed twice in one claim (say a
// worker that registers two handlers for one step, or a caller that appends
// the same step list twice) returns every claimed task twice (the wanted
// CTE joins once per listing) and returns more rows than max_tasks. The
// worker would run each task twice; one of its reports is then fenced out.
func TestClaimDuplicateStepPairs(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("dup", "", step{slug: "each", fanout: true})
	e.start("dup", `[1, 2, 3]`)
	got := e.claim(2, "dup.each", "dup.each")
	seen := map[int]int{}
	for _, k := range got {
		seen[k.Index]++
	}
	if len(got) > 2 {
		t.Errorf("claim with max_tasks 2 returned %d rows", len(got))
	}
	for idx, n := range seen {
		if n > 1 {
			t.Errorf("task %d returned %d times by one claim", idx, n)
		}
	}
}

//------------------------------------------------------------------------------
// Verified behaviour (these pass)
//------------------------------------------------------------------------------

// Two fast-path completions of one fanout step queue on its step state; the
// one that comes second no longer fits the guard, falls back to the slow
// path (PF900) and aggregates. The output is aggregated once, in task order,
// and the dependent starts once.
func TestCompletionsRacingToFinishAggregateOnce(t *testing.T) {
	t.Parallel()
	for _, bigFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("batch of two first=%v", bigFirst), func(t *testing.T) {
			t.Parallel()
			e := newEngine(t)
			e.flow("agg", "", step{slug: "each", fanout: true}, step{slug: "sum", deps: []string{"each"}})
			run := e.start("agg", `[10, 20, 30]`)
			tasks := e.claim(10, "agg.each")
			blocker, c1, c2 := e.sideConn(), e.sideConn(), e.sideConn()
			blocker.exec("BEGIN")
			blocker.exec("SELECT 1 FROM pgflow.step_states WHERE run_id = $1::uuid AND step_slug = 'each' FOR UPDATE", run)
			big := func() <-chan sideResult {
				ch := c1.goQuery(sideCompleteSQL, completeArgs(tasks[:2], `"o0"`, `"o1"`)...)
				e.waitBlocked(c1.pid)
				return ch
			}
			small := func() <-chan sideResult {
				ch := c2.goQuery(sideCompleteSQL, completeArgs(tasks[2:], `"o2"`)...)
				e.waitBlocked(c2.pid)
				return ch
			}
			var r1, r2 <-chan sideResult
			if bigFirst {
				r1 = big()
				r2 = small()
			} else {
				r2 = small()
				r1 = big()
			}
			blocker.exec("COMMIT")
			a, b := e.await(r1), e.await(r2)
			if a.err != nil || b.err != nil || a.val != "2" || b.val != "1" {
				t.Fatalf("applied %q (%v) and %q (%v), want 2 and 1", a.val, a.err, b.val, b.err)
			}
			jsonEqual(t, "aggregate", e.stepOutput(run, "each"), `["o0", "o1", "o2"]`)
			if n := scalar[int](e, "SELECT count(*)::int FROM pgflow.step_tasks WHERE run_id = $1::uuid AND step_slug = 'sum'", run); n != 1 {
				t.Fatalf("%d sum tasks", n)
			}
			sum := e.claim(10, "agg.sum")
			jsonEqual(t, "sum deps", sum[0].Deps, `{"each": ["o0", "o1", "o2"]}`)
		})
	}
}

// A fast-path completion that already holds one of its tasks while the run
// ends (cancel, or the last attempt of another task failing): _end_run skips
// the locked tasks, the completion's decrement finds the step state ended,
// raises PF900, and the slow path cancels the tasks. Nothing applies and
// nothing of the run stays live.
func TestRunEndsDuringFastPathCompletion(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"cancel", "fail"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t)
			e.flow("end", "max_attempts => 1", step{slug: "each", fanout: true}, step{slug: "after", deps: []string{"each"}})
			run := e.start("end", `[1, 2, 3, 4]`)
			tasks := e.claim(10, "end.each")
			blocker := e.sideConn()
			blocker.exec("BEGIN")
			blocker.exec("SELECT 1 FROM pgflow.step_tasks WHERE run_id = $1::uuid AND task_index = 1 FOR UPDATE", run)
			completed := e.completeHolding(tasks[:2], []string{`"a"`, `"b"`}, tasks[0]) // holds T0, waits for T1
			ender := e.sideConn()
			var ended <-chan sideResult
			switch how {
			case "cancel":
				ended = ender.goQuery("SELECT pgflow.cancel_run($1::uuid)::text", run)
			case "fail":
				k := tasks[3]
				ended = ender.goQuery("SELECT pgflow.fail_task($1::uuid, $2, $3, $4, 'boom')", k.RunID, k.Step, k.Index, k.Attempt)
			}
			// With the current protocol the run ends at once, skipping the
			// locked tasks; with step states locked first by the fast path
			// (the suggested fix) the ender waits for the completion.
			res, endedFirst := e.doneOrBlocked(ender.pid, ended)
			if endedFirst {
				if res.err != nil || (res.val != "true" && res.val != "failed") {
					t.Fatalf("%s: %q, %v", how, res.val, res.err)
				}
				if s := e.taskStatus(run, "each", 0); s != "started" {
					t.Fatalf("T0 is %s; expected _end_run to skip the locked task", s)
				}
			}
			blocker.exec("ROLLBACK")
			rc := e.await(completed)
			if !endedFirst {
				res = e.await(ended)
				if res.err != nil || (res.val != "true" && res.val != "failed") {
					t.Fatalf("%s: %q, %v", how, res.val, res.err)
				}
			}
			want, wantApplied := "cancelled", "0" // the PF900 fallback cancels them
			if !endedFirst {
				want, wantApplied = "completed", "2"
			}
			if rc.err != nil || rc.val != wantApplied {
				t.Fatalf("complete: applied %q, %v; want %s", rc.val, rc.err, wantApplied)
			}
			if n := e.liveTasks(run); n != 0 {
				t.Fatalf("%d live tasks left", n)
			}
			for i := 0; i < 2; i++ {
				if s := e.taskStatus(run, "each", i); s != want {
					t.Errorf("task %d is %s, want %s", i, s, want)
				}
			}
			if s := e.taskStatus(run, "each", 2); s != "cancelled" {
				t.Errorf("task 2 is %s, want cancelled", s)
			}
			if out := e.stepOutput(run, "each"); out != "" {
				t.Errorf("step output %s", out)
			}
			r := e.run(run)
			if want := map[string]string{"cancel": "cancelled", "fail": "failed"}[how]; r.Status != want {
				t.Errorf("run %s, want %s", r.Status, want)
			}
		})
	}
}

// Diamonds whose two branches complete in one batch, for two runs at once,
// and then both joins in one batch.
func TestDiamondBranchesInOneBatch(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("dia", "",
		step{slug: "root"},
		step{slug: "left", deps: []string{"root"}},
		step{slug: "right", deps: []string{"root"}},
		step{slug: "join", deps: []string{"left", "right"}})
	all := []string{"dia.root", "dia.left", "dia.right", "dia.join"}
	r1, r2 := e.start("dia", `{"n": 1}`), e.start("dia", `{"n": 2}`)
	roots := e.claim(10, all...)
	if n, err := completeBatch(e.ctx, e.pool, roots, func(k task) string { return `"root"` }); err != nil || n != 2 {
		t.Fatalf("roots: %d, %v", n, err)
	}
	branches := e.claim(10, all...)
	if len(branches) != 4 {
		t.Fatalf("claimed %+v, want 4 branch tasks", branches)
	}
	out := func(k task) string { return fmt.Sprintf(`"%s-%s"`, k.Step, k.RunID[:4]) }
	if n, err := completeBatch(e.ctx, e.pool, branches, out); err != nil || n != 4 {
		t.Fatalf("branches: %d, %v", n, err)
	}
	joins := e.claim(10, all...)
	if len(joins) != 2 {
		t.Fatalf("claimed %+v, want 2 joins", joins)
	}
	for _, j := range joins {
		if j.Step != "join" {
			t.Fatalf("claimed %s", j.Step)
		}
		jsonEqual(t, "join deps", j.Deps, fmt.Sprintf(`{"left": "left-%s", "right": "right-%s"}`, j.RunID[:4], j.RunID[:4]))
	}
	if n, err := completeBatch(e.ctx, e.pool, joins, func(k task) string { return `{"ok": true}` }); err != nil || n != 2 {
		t.Fatalf("joins: %d, %v", n, err)
	}
	for _, run := range []string{r1, r2} {
		r := e.run(run)
		if r.Status != "completed" || r.RemainingSteps != 0 {
			t.Fatalf("run %s: %s with %d steps left", run, r.Status, r.RemainingSteps)
		}
		jsonEqual(t, "run output", string(r.Output), `{"join": {"ok": true}}`)
	}
}

// A fanout over a fanout: each task of the second gets one output of the
// first; a single step after it sees the second's aggregate.
func TestFanoutChain(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("chain", "",
		step{slug: "first", fanout: true},
		step{slug: "second", deps: []string{"first"}, fanout: true},
		step{slug: "last", deps: []string{"second"}})
	run := e.start("chain", `[1, 2, 3]`)
	first := e.claim(10, "chain.first")
	if n, err := completeBatch(e.ctx, e.pool, first, func(k task) string { return fmt.Sprintf(`{"x": %s}`, k.Item) }); err != nil || n != 3 {
		t.Fatalf("first: %d, %v", n, err)
	}
	second := e.claim(10, "chain.second")
	if len(second) != 3 {
		t.Fatalf("second: %+v", second)
	}
	for i, k := range second {
		jsonEqual(t, "item", k.Item, fmt.Sprintf(`{"x": %d}`, i+1))
	}
	// Complete in reverse order, one by one (fast path, then the last one
	// on the slow path).
	for i := len(second) - 1; i >= 0; i-- {
		if !e.complete(second[i], fmt.Sprintf(`[%d]`, i)) {
			t.Fatalf("complete second[%d]", i)
		}
	}
	last := e.claim(10, "chain.last")
	jsonEqual(t, "last deps", last[0].Deps, `{"second": [[0], [1], [2]]}`)
	e.complete(last[0], `null`)
	r := e.run(run)
	if r.Status != "completed" {
		t.Fatalf("run %s", r.Status)
	}
	jsonEqual(t, "run output", string(r.Output), `{"last": null}`)
}

// The run output holds every leaf step: a JSON null output, and an empty
// fanout that completed inside the completion of its dependency.
func TestRunOutputHasEveryLeaf(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("leaves", "",
		step{slug: "a"},
		step{slug: "b", deps: []string{"a"}},
		step{slug: "e", deps: []string{"a"}, fanout: true})
	run := e.start("leaves", `{}`)
	a := e.claim(10, "leaves.a", "leaves.b", "leaves.e")
	e.complete(a[0], `[]`)
	b := e.claim(10, "leaves.a", "leaves.b", "leaves.e")
	if len(b) != 1 || b[0].Step != "b" {
		t.Fatalf("claimed %+v", b)
	}
	if r := e.run(run); r.Status != "started" || r.RemainingSteps != 1 {
		t.Fatalf("run %s with %d steps left, want started with 1", r.Status, r.RemainingSteps)
	}
	if !scalar[bool](e, "SELECT pgflow.complete_task($1::uuid, 'b', 0, $2, NULL)", run, b[0].Attempt) {
		t.Fatal("complete b")
	}
	r := e.run(run)
	if r.Status != "completed" {
		t.Fatalf("run %s", r.Status)
	}
	jsonEqual(t, "run output", string(r.Output), `{"b": null, "e": []}`)
}

// One batch completes the producers of two runs; one output is an array,
// the other is not. The bad one fails its run (naming fanout, dependency,
// type), the good one moves on, nothing raises, both results apply.
func TestNonArraySourceInAMixedBatch(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	fanoutFlow(e, "mixed")
	good, bad := e.start("mixed", `{"ok": true}`), e.start("mixed", `{"ok": false}`)
	preps := e.claim(10, "mixed.prepare")
	n, err := completeBatch(e.ctx, e.pool, preps, func(k task) string {
		if k.RunID == good {
			return `[1, 2]`
		}
		return `{"not": "array"}`
	})
	if err != nil || n != 2 {
		t.Fatalf("applied %d, %v; want 2", n, err)
	}
	if r := e.run(good); r.Status != "started" || r.stepStatuses()["items"] != "started" {
		t.Fatalf("good run %s %v", r.Status, r.stepStatuses())
	}
	r := e.run(bad)
	if r.Status != "failed" || deref(r.ErrorStep) != "items" || r.stepStatuses()["prepare"] != "completed" {
		t.Fatalf("bad run %+v", r)
	}
	for _, want := range []string{`"items"`, `"prepare"`, "object"} {
		if !strings.Contains(deref(r.ErrorMessage), want) {
			t.Errorf("error %q lacks %s", deref(r.ErrorMessage), want)
		}
	}
	if got := e.claim(10, "mixed.items"); len(got) != 2 || got[0].RunID != good {
		t.Fatalf("claimed %+v", got)
	}
}

// A non-array source fails its run even when a sibling step became ready in
// the same completion (and may have been started in the same statement):
// nothing of the run stays live or claimable.
func TestNonArraySourceCancelsReadySiblings(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("sib", "",
		step{slug: "prepare"},
		step{slug: "items", deps: []string{"prepare"}, fanout: true},
		step{slug: "side", deps: []string{"prepare"}},
		step{slug: "empty", deps: []string{"prepare"}, fanout: true},
		step{slug: "after", deps: []string{"empty"}})
	run := e.start("sib", `{}`)
	prep := e.claim(10, "sib.prepare")
	if !e.complete(prep[0], `{"not": "array"}`) {
		t.Fatal("complete prepare: not applied")
	}
	r := e.run(run)
	if r.Status != "failed" {
		t.Fatalf("run %s", r.Status)
	}
	// Which of the two bad fanouts is named is not specified; both name prepare.
	if es := deref(r.ErrorStep); es != "items" && es != "empty" {
		t.Errorf("error step %q", es)
	}
	for slug, st := range r.stepStatuses() {
		if slug != "prepare" && st != "cancelled" && st != "failed" {
			t.Errorf("step %s is %s", slug, st)
		}
	}
	if n := e.liveTasks(run); n != 0 {
		t.Fatalf("%d live tasks", n)
	}
	if got := e.claim(10, "sib.items", "sib.side", "sib.empty", "sib.after"); len(got) != 0 {
		t.Fatalf("claimed %+v", got)
	}
}

// Duplicate keys in one batch apply once.
func TestDuplicateKeysInABatch(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("dups", "max_attempts => 3, base_delay => '0'", step{slug: "each", fanout: true})
	run := e.start("dups", `[1, 2, 3, 4]`)
	tasks := e.claim(10, "dups.each")
	n, err := completeBatch(e.ctx, e.pool, []task{tasks[0], tasks[0], tasks[1]}, func(task) string { return `1` })
	if err != nil || n != 2 {
		t.Fatalf("complete applied %d, %v; want 2", n, err)
	}
	if got := scalar[int](e, "SELECT remaining_tasks FROM pgflow.step_states WHERE run_id = $1::uuid", run); got != 2 {
		t.Fatalf("remaining %d, want 2", got)
	}
	n, err = failBatch(e.ctx, e.pool, []task{tasks[2], tasks[2]}, false)
	if err != nil || n != 1 {
		t.Fatalf("fail applied %d, %v; want 1", n, err)
	}
	if f := scalar[int](e, "SELECT failures FROM pgflow.step_tasks WHERE run_id = $1::uuid AND task_index = 2", run); f != 1 {
		t.Fatalf("failures %d, want 1", f)
	}
}

// A fail batch spanning two runs: a last attempt fails its run (and takes
// that run's queued tasks out of the queue); a retry of the other run is
// requeued after the step's own base delay.
func TestFailBatchSpanningRuns(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("fails", "max_attempts => 2, base_delay => '1 second'",
		step{slug: "each", fanout: true, extra: "base_delay => '40 seconds'"})
	r1, r2 := e.start("fails", `[1, 2]`), e.start("fails", `[1]`)
	tasks := e.claim(10, "fails.each")
	first := pick(t, tasks, r1, "each", 0)
	// r1's task 0 fails once, is retried, and its second claim is its last.
	e.fail(first, "x", false)
	e.makeVisible(r1)
	again := e.claim(1, "fails.each")
	if len(again) != 1 || again[0].Attempt != 2 {
		t.Fatalf("claimed %+v", again)
	}
	batch := []task{again[0], pick(t, tasks, r2, "each", 0)}
	if n, err := failBatch(e.ctx, e.pool, batch, false); err != nil || n != 2 {
		t.Fatalf("applied %d, %v", n, err)
	}
	if r := e.run(r1); r.Status != "failed" || deref(r.ErrorTaskIndex) != 0 {
		t.Fatalf("run 1 %+v", r)
	}
	if n := e.liveTasks(r1); n != 0 {
		t.Fatalf("run 1 has %d live tasks", n)
	}
	if r := e.run(r2); r.Status != "started" {
		t.Fatalf("run 2 %s", r.Status)
	}
	delay := scalar[float64](e, "SELECT extract(epoch FROM visible_at - now()) FROM pgflow.step_tasks WHERE run_id = $1::uuid", r2)
	if delay < 38 || delay > 40.5 {
		t.Fatalf("retry in %.1fs, want the step's 40s", delay)
	}
}

// Step options reach the lease and the reaper: a step's own max_attempts 1
// makes its first expired lease fail the run, while a sibling inheriting the
// flow's 3 attempts is taken over with a lease of timeout + grace + the
// step's retry delay.
func TestStepOptionsInLeasesAndReaper(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("opts", "max_attempts => 3, base_delay => '10 seconds', timeout => '1 minute'",
		step{slug: "once", extra: "max_attempts => 1"},
		step{slug: "twice", extra: "timeout => '20 seconds', base_delay => '100 seconds'"})
	run := e.start("opts", `{}`)
	got := e.claim(10, "opts.once", "opts.twice")
	if len(got) != 2 {
		t.Fatalf("claimed %+v", got)
	}
	lease := func(step string) float64 {
		return scalar[float64](e, "SELECT extract(epoch FROM visible_at - now()) FROM pgflow.step_tasks WHERE run_id = $1::uuid AND step_slug = $2", run, step)
	}
	// once: last attempt, no retry delay: 60 + 2. twice: 20 + 2 + 100.
	if l := lease("once"); l < 60 || l > 62.5 {
		t.Errorf("lease of once %.1fs, want 62s", l)
	}
	if l := lease("twice"); l < 120 || l > 122.5 {
		t.Errorf("lease of twice %.1fs, want 122s", l)
	}
	e.exec("UPDATE pgflow.step_tasks SET visible_at = now() - interval '1 second' WHERE run_id = $1::uuid AND step_slug = 'twice'", run)
	again := e.claim(10, "opts.twice")
	if len(again) != 1 || again[0].Attempt != 2 {
		t.Fatalf("takeover: %+v", again)
	}
	// 20 + 2 + 100 * 2^1 after one failure.
	if l := lease("twice"); l < 220 || l > 222.5 {
		t.Errorf("second lease of twice %.1fs, want 222s", l)
	}
	e.exec("UPDATE pgflow.step_tasks SET visible_at = now() - interval '1 second' WHERE run_id = $1::uuid AND step_slug = 'once'", run)
	if got := e.claim(10, "opts.once"); len(got) != 0 {
		t.Fatalf("claimed %+v", got)
	}
	r := e.run(run)
	if r.Status != "failed" || deref(r.ErrorStep) != "once" || !strings.HasPrefix(deref(r.ErrorMessage), "timeout") {
		t.Fatalf("run %+v", r)
	}
	if n := e.liveTasks(run); n != 0 {
		t.Fatalf("%d live tasks", n)
	}
}

// A start delay also applies to a step that becomes ready later, counted
// from the moment it becomes ready.
func TestStartDelayOfADependentStep(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("later", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}, extra: "start_delay => '10 minutes'"})
	run := e.start("later", `{}`)
	a := e.claim(10, "later.a", "later.b")
	e.complete(a[0], `1`)
	if got := e.claim(10, "later.a", "later.b"); len(got) != 0 {
		t.Fatalf("claimed %+v before the delay", got)
	}
	delay := scalar[float64](e, "SELECT extract(epoch FROM visible_at - now()) FROM pgflow.step_tasks WHERE run_id = $1::uuid AND step_slug = 'b'", run)
	if delay < 595 || delay > 600.5 {
		t.Fatalf("b visible in %.0fs, want 600", delay)
	}
	e.makeVisible(run)
	b := e.claim(10, "later.b")
	if len(b) != 1 {
		t.Fatalf("claimed %+v after the delay", b)
	}
	jsonEqual(t, "deps", b[0].Deps, `{"a": 1}`)
}

// release_tasks hands a task back without counting a failure; the released
// attempt is fenced out; a release of an ended run's task changes nothing.
func TestRelease(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("rel", "max_attempts => 1", step{slug: "each", fanout: true})
	run := e.start("rel", `[1, 2]`)
	tasks := e.claim(10, "rel.each")
	release := func(k task) int {
		return scalar[int](e, "SELECT pgflow.release_tasks(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::int], ARRAY[$4::int])",
			k.RunID, k.Step, k.Index, k.Attempt)
	}
	if n := release(tasks[0]); n != 1 {
		t.Fatalf("released %d", n)
	}
	if n := release(tasks[0]); n != 0 {
		t.Fatalf("released twice")
	}
	again := e.claim(10, "rel.each")
	if len(again) != 1 || again[0].Attempt != 2 {
		t.Fatalf("re-claimed %+v", again)
	}
	if f := scalar[int](e, "SELECT failures FROM pgflow.step_tasks WHERE run_id = $1::uuid AND task_index = 0", run); f != 0 {
		t.Fatalf("release counted %d failures", f)
	}
	if e.complete(tasks[0], `"old"`) {
		t.Fatal("released attempt applied")
	}
	e.exec("SELECT pgflow.cancel_run($1::uuid)", run)
	if n := release(again[0]); n != 0 {
		t.Fatalf("release of a cancelled run's task applied")
	}
}

// One batch mixes single steps and fanout tasks (a fanout's first task and
// its others): the single steps complete on their own path, the fanout
// tasks on the general one, and each run moves on exactly once. A single
// step that releases a fanout over an empty array completes it on the way,
// and a run whose leaves complete in the same batch gets them all.
func TestBatchOfSinglesAndFanoutTasks(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("pair", "",
		step{slug: "first"},
		step{slug: "second", deps: []string{"first"}},
		step{slug: "none", deps: []string{"first"}, fanout: true})
	e.flow("spread", "",
		step{slug: "each", fanout: true},
		step{slug: "sum", deps: []string{"each"}})
	e.flow("twin", "",
		step{slug: "left"},
		step{slug: "right"})
	pair, spread, twin := e.start("pair", `{}`), e.start("spread", `[10, 20, 30]`), e.start("twin", `{}`)
	all := []string{"pair.first", "pair.second", "pair.none", "spread.each", "spread.sum", "twin.left", "twin.right"}
	batch := e.claim(10, all...)
	if len(batch) != 6 {
		t.Fatalf("claimed %+v, want 6 tasks", batch)
	}
	out := func(k task) string {
		switch k.Step {
		case "first":
			return `[]`
		case "each":
			return fmt.Sprintf(`{"i": %d}`, k.Index)
		}
		return fmt.Sprintf(`%q`, k.Step)
	}
	if n, err := completeBatch(e.ctx, e.pool, batch, out); err != nil || n != 6 {
		t.Fatalf("batch: %d, %v", n, err)
	}
	if r := e.run(twin); r.Status != "completed" {
		t.Fatalf("twin run %s", r.Status)
	} else {
		jsonEqual(t, "twin output", string(r.Output), `{"left": "left", "right": "right"}`)
	}
	jsonEqual(t, "pair none", e.stepOutput(pair, "none"), `[]`)
	if r := e.run(pair); r.Status != "started" || r.RemainingSteps != 1 {
		t.Fatalf("pair run %s with %d steps left, want started with 1", r.Status, r.RemainingSteps)
	}
	next := e.claim(10, all...)
	if len(next) != 2 {
		t.Fatalf("claimed %+v, want second and sum", next)
	}
	for _, k := range next {
		if k.Step == "sum" {
			jsonEqual(t, "sum deps", k.Deps, `{"each": [{"i": 0}, {"i": 1}, {"i": 2}]}`)
		}
	}
	if n, err := completeBatch(e.ctx, e.pool, next, out); err != nil || n != 2 {
		t.Fatalf("next: %d, %v", n, err)
	}
	for run, want := range map[string]string{pair: `{"second": "second", "none": []}`, spread: `{"sum": "sum"}`} {
		r := e.run(run)
		if r.Status != "completed" || r.RemainingSteps != 0 {
			t.Fatalf("run %s: %s with %d steps left", run, r.Status, r.RemainingSteps)
		}
		jsonEqual(t, "run output", string(r.Output), want)
	}
}
