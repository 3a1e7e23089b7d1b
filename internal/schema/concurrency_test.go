package schema_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// completeBatch completes tasks in one complete_tasks call; output of each is outputFor(task).
func completeBatch(ctx context.Context, pool *pgxpool.Pool, tasks []task, outputFor func(task) string) (int, error) {
	var runs, steps, outputs []string
	var idx, att []int
	for _, k := range tasks {
		runs, steps, outputs = append(runs, k.RunID), append(steps, k.Step), append(outputs, outputFor(k))
		idx, att = append(idx, k.Index), append(att, k.Attempt)
	}
	var n int
	err := pool.QueryRow(ctx, "SELECT pgflow.complete_tasks($1::uuid[], $2, $3, $4, $5::jsonb[])",
		runs, steps, idx, att, outputs).Scan(&n)
	return n, err
}

// failBatch fails tasks in one fail_tasks call.
func failBatch(ctx context.Context, pool *pgxpool.Pool, tasks []task, permanent bool) (int, error) {
	var runs, steps, msgs []string
	var idx, att []int
	var perm []bool
	for _, k := range tasks {
		runs, steps, msgs = append(runs, k.RunID), append(steps, k.Step), append(msgs, "failed on purpose")
		idx, att, perm = append(idx, k.Index), append(att, k.Attempt), append(perm, permanent)
	}
	var n int
	err := pool.QueryRow(ctx, "SELECT pgflow.fail_tasks($1::uuid[], $2, $3, $4, $5, $6)",
		runs, steps, idx, att, msgs, perm).Scan(&n)
	return n, err
}

// claimErr is claimOn returning errors instead of failing the test (for goroutines).
func claimErr(ctx context.Context, pool *pgxpool.Pool, limit int, steps ...string) (tasks []task, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return claimOn(panicTB{}, ctx, pool, limit, steps...), nil
}

// panicTB turns Fatalf into a panic so helpers can run off the test goroutine.
type panicTB struct{ testing.TB }

func (panicTB) Helper()                        {}
func (panicTB) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

func TestConcurrentFanoutDrain(t *testing.T) {
	t.Parallel()
	const items = 2000
	const workers = 8
	e := newEngine(t)
	fanoutFlow(e, "drain")
	run := e.start("drain", `{}`)
	elems := make([]int, items)
	for i := range elems {
		elems[i] = i
	}
	prep := e.claim(1, "drain.prepare")
	e.complete(prep[0], mustMarshal(t, elems))

	var mu sync.Mutex
	claimed := make([]int, items)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := pgxpool.New(e.ctx, e.pool.Config().ConnString())
			if err != nil {
				errs <- err
				return
			}
			defer pool.Close()
			for {
				tasks, err := claimErr(e.ctx, pool, 1+w*7%40, "drain.items")
				if err != nil {
					errs <- fmt.Errorf("worker %d claim: %w", w, err)
					return
				}
				if len(tasks) == 0 {
					return
				}
				mu.Lock()
				for _, k := range tasks {
					claimed[k.Index]++
				}
				mu.Unlock()
				out := func(k task) string { return fmt.Sprintf(`{"i": %s}`, k.Item) }
				if w%2 == 0 {
					// Half the workers complete task by task, in reverse order.
					for i := len(tasks) - 1; i >= 0; i-- {
						if _, err := completeBatch(e.ctx, pool, tasks[i:i+1], out); err != nil {
							errs <- fmt.Errorf("worker %d complete: %w", w, err)
							return
						}
					}
				} else if n, err := completeBatch(e.ctx, pool, tasks, out); err != nil || n != len(tasks) {
					errs <- fmt.Errorf("worker %d complete batch: applied %d of %d: %v", w, n, len(tasks), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, n := range claimed {
		if n != 1 {
			t.Fatalf("task %d claimed %d times", i, n)
		}
	}
	var got []struct{ I int }
	mustUnmarshal(t, e.stepOutput(run, "items"), &got)
	if len(got) != items {
		t.Fatalf("aggregated %d outputs, want %d", len(got), items)
	}
	for i, g := range got {
		if g.I != i {
			t.Fatalf("output %d holds item %d", i, g.I)
		}
	}
	gather := e.claim(10, "drain.gather")
	if len(gather) != 1 {
		t.Fatalf("gather tasks: %d", len(gather))
	}
	e.complete(gather[0], `"done"`)
	if r := e.run(run); r.Status != "completed" || r.RemainingSteps != 0 {
		t.Fatalf("run %s with %d steps left", r.Status, r.RemainingSteps)
	}
}

// TestConcurrentEndings races completions, retries, permanent failures and
// cancellations over several runs and checks that no statement deadlocks and
// every run ends consistently.
func TestConcurrentEndings(t *testing.T) {
	t.Parallel()
	const runs = 9
	const items = 300
	e := newEngine(t)
	e.flow("race", "max_attempts => 3, base_delay => '0'",
		step{slug: "prepare"},
		step{slug: "each", deps: []string{"prepare"}, fanout: true},
		step{slug: "left", deps: []string{"each"}},
		step{slug: "right", deps: []string{"each"}},
		step{slug: "join", deps: []string{"left", "right"}})
	var runIDs []string
	for i := range runs {
		// The input says what prepare outputs: an array, or (for some runs) an
		// object, which fails the run when the fanout starts.
		input := mustMarshal(t, make([]int, items))
		if i%3 == 2 {
			input = `{"not": "an array"}`
		}
		runIDs = append(runIDs, e.start("race", `{"prepared": `+input+`}`))
	}
	all := []string{"race.prepare", "race.each", "race.left", "race.right", "race.join"}
	output := func(k task) string {
		if k.Step == "prepare" {
			var in struct{ Prepared json.RawMessage }
			if err := json.Unmarshal([]byte(k.RunInput), &in); err != nil {
				return "null"
			}
			return string(in.Prepared)
		}
		return "1"
	}

	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	report := func(err error) {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
			err = fmt.Errorf("deadlock: %w", err)
		}
		select {
		case errs <- err:
		default:
		}
	}
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for ctx.Err() == nil {
				tasks, err := claimErr(ctx, e.pool, 1+rng.IntN(30), all...)
				if err != nil {
					report(err)
					return
				}
				if len(tasks) == 0 {
					if e.liveTotal(ctx) == 0 {
						return
					}
					continue
				}
				rng.Shuffle(len(tasks), func(i, j int) { tasks[i], tasks[j] = tasks[j], tasks[i] })
				cut := rng.IntN(len(tasks) + 1)
				switch x := rng.IntN(100); {
				case x < 5:
					_, err = failBatch(ctx, e.pool, tasks[:cut], true)
				case x < 15:
					_, err = failBatch(ctx, e.pool, tasks[:cut], false)
				default:
					_, err = completeBatch(ctx, e.pool, tasks[:cut], output)
				}
				if err == nil {
					_, err = completeBatch(ctx, e.pool, tasks[cut:], output)
				}
				if err != nil {
					report(err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i, run := range runIDs {
			if i%2 == 1 {
				if _, err := e.pool.Exec(ctx, "SELECT pgflow.cancel_run($1::uuid)", run); err != nil {
					report(err)
					return
				}
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ctx.Err() != nil {
		t.Fatal("runs did not end within a minute")
	}
	ended := map[string]int{}
	defer func() { t.Logf("runs ended: %v", ended) }()
	for _, run := range runIDs {
		r := e.run(run)
		ended[r.Status+": "+deref(r.ErrorMessage)[:min(len(deref(r.ErrorMessage)), 24)]]++
		switch r.Status {
		case "completed":
			var out map[string]json.RawMessage
			mustUnmarshal(t, string(r.Output), &out)
			if _, ok := out["join"]; !ok || len(out) != 1 {
				t.Errorf("run %s output %s", run, r.Output)
			}
			var agg []int
			mustUnmarshal(t, e.stepOutput(run, "each"), &agg)
			if len(agg) != items {
				t.Errorf("run %s aggregated %d items", run, len(agg))
			}
		case "failed", "cancelled":
			for slug, st := range r.stepStatuses() {
				if st == "created" || st == "started" {
					t.Errorf("run %s is %s but step %s is %s", run, r.Status, slug, st)
				}
			}
		default:
			t.Errorf("run %s still %s", run, r.Status)
		}
		if n := e.liveTasks(run); n != 0 {
			t.Errorf("run %s (%s) has %d live tasks", run, r.Status, n)
		}
	}
}

// liveTotal counts queued or started tasks of all runs.
func (e *engine) liveTotal(ctx context.Context) int {
	var n int
	if err := e.pool.QueryRow(ctx, "SELECT count(*)::int FROM pgflow.step_tasks WHERE status IN ('queued', 'started')").Scan(&n); err != nil {
		return -1
	}
	return n
}

// TestNotifyAfterClaim: complete_and_claim announces the tasks its
// completions queued only when its claim leaves some of them queued.
func TestNotifyAfterClaim(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("hand", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}}, step{slug: "c", deps: []string{"b"}})
	e.flow("spread", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}, fanout: true})
	e.flow("later", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}, extra: "start_delay => '1 hour'"})
	e.flow("held", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}}, step{slug: "x", extra: "start_delay => '1 hour'"})

	listener, err := e.pool.Acquire(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Release()
	if _, err := listener.Exec(e.ctx, "LISTEN pgflow_tasks"); err != nil {
		t.Fatal(err)
	}
	// announced reports the flows announced since the last call: a marker
	// notified after them arrives after them (notifications arrive in the
	// order their transactions committed).
	announced := func() []string {
		t.Helper()
		e.exec("SELECT pg_notify('pgflow_tasks', 'marker')")
		var got []string
		for {
			ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
			n, err := listener.Conn().WaitForNotification(ctx)
			cancel()
			if err != nil {
				t.Fatalf("waiting for the marker: %v", err)
			}
			if n.Payload == "marker" {
				return got
			}
			got = append(got, n.Payload)
		}
	}
	// report completes task a of a run with output [1, 2, 3] and claims up
	// to max tasks of steps in one complete_and_claim call, on q.
	report := func(q querier, a task, max int, steps ...string) (applied int, claimed []task) {
		t.Helper()
		var (
			run, step string
			index     int
		)
		flows, slugs := splitSteps(steps)
		rows, err := q.Query(e.ctx, `
			SELECT applied, coalesce(run_id::text, ''), coalesce(step_slug, ''), coalesce(task_index, -1)
			FROM pgflow.complete_and_claim($1::uuid[], $2, $3, $4, $5::jsonb[],
			                               '00000000-0000-0000-0000-000000000001', $6, $7, $8)`,
			append(completeArgs([]task{a}, `[1, 2, 3]`), flows, slugs, max)...)
		if err != nil {
			t.Fatal(err)
		}
		_, err = pgx.ForEachRow(rows, []any{&applied, &run, &step, &index}, func() error {
			if run != "" {
				claimed = append(claimed, task{RunID: run, Step: step, Index: index})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return applied, claimed
	}

	cases := []struct {
		name     string
		flow     string
		steps    []string // the steps the claim asks for
		max      int
		claimed  int
		announce []string // flows announced by the report
	}{
		{"the claim takes the next step", "hand", []string{"hand.b"}, 10, 1, nil},
		{"the claim serves other steps", "hand", []string{"hand.c"}, 10, 0, []string{"hand"}},
		{"the claim asks for no task", "hand", []string{"hand.b"}, 0, 0, []string{"hand"}},
		{"tasks beyond the claim's limit", "spread", []string{"spread.b"}, 2, 2, []string{"spread"}},
		{"the claim takes every task", "spread", []string{"spread.b"}, 3, 3, nil},
		{"a delayed task", "later", []string{"later.b"}, 10, 0, []string{"later"}},
		// x, delayed, was queued by the start, which announced it.
		{"a task queued earlier", "held", []string{"held.b", "held.x"}, 10, 1, nil},
	}
	for _, c := range cases {
		run := e.start(c.flow, `{}`)
		a := e.claim(1, c.flow+".a")
		if len(a) != 1 || a[0].RunID != run {
			t.Fatalf("%s: claimed %+v, want a of run %s", c.name, a, run)
		}
		announced() // the start's
		applied, claimed := report(e.pool, a[0], c.max, c.steps...)
		if applied != 1 || len(claimed) != c.claimed {
			t.Errorf("%s: applied %d and claimed %d tasks, want 1 and %d", c.name, applied, len(claimed), c.claimed)
		}
		if got := announced(); !slices.Equal(got, c.announce) {
			t.Errorf("%s: announced %q, want %q", c.name, got, c.announce)
		}
		e.exec("SELECT pgflow.cancel_run($1)", run)
	}

	// Announced at once: by complete_tasks, after complete_and_claim in the
	// same transaction, and whatever pgflow.claim_follows a session sets.
	first, second := e.start("hand", `{}`), e.start("hand", `{}`)
	a := e.claim(2, "hand.a")
	announced()
	tx, err := e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(e.ctx)
	if _, claimed := report(tx, pick(t, a, first, "a", 0), 1, "hand.b"); len(claimed) != 1 {
		t.Fatalf("claimed %+v, want b of %s", claimed, first)
	}
	if _, err := tx.Exec(e.ctx, sideCompleteSQL, completeArgs([]task{pick(t, a, second, "a", 0)}, `1`)...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := announced(); !slices.Equal(got, []string{"hand"}) {
		t.Errorf("complete_tasks after complete_and_claim: announced %q, want [hand]", got)
	}
	e.exec("SELECT pgflow.cancel_run($1), pgflow.cancel_run($2)", first, second)

	// A complete_and_claim undone by a savepoint leaves nothing noted.
	first, second = e.start("hand", `{}`), e.start("hand", `{}`)
	a = e.claim(2, "hand.a")
	announced()
	tx, err = e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(e.ctx)
	if _, err := tx.Exec(e.ctx, "SAVEPOINT report"); err != nil {
		t.Fatal(err)
	}
	// The claim's arrays differ in length: it fails after the completion.
	_, err = tx.Exec(e.ctx, `SELECT * FROM pgflow.complete_and_claim($1::uuid[], $2, $3, $4, $5::jsonb[],
		'00000000-0000-0000-0000-000000000001', '{hand,hand}', '{b}', 1)`,
		completeArgs([]task{pick(t, a, first, "a", 0)}, `1`)...)
	if got := sqlStateOf(err); got != "PF005" {
		t.Fatalf("complete_and_claim with a bad claim: %v, want PF005", err)
	}
	if _, err := tx.Exec(e.ctx, "ROLLBACK TO SAVEPOINT report"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, sideCompleteSQL, completeArgs([]task{pick(t, a, second, "a", 0)}, `1`)...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := announced(); !slices.Equal(got, []string{"hand"}) {
		t.Errorf("complete_tasks after an undone complete_and_claim: announced %q, want [hand]", got)
	}
	e.exec("SELECT pgflow.cancel_run($1), pgflow.cancel_run($2)", first, second)

	run := e.start("hand", `{}`)
	a = e.claim(1, "hand.a")
	announced()
	conn, err := e.pool.Acquire(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(e.ctx, "SET pgflow.claim_follows = 'on'"); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(e.ctx, "RESET pgflow.claim_follows")
	if _, err := conn.Exec(e.ctx, sideCompleteSQL, completeArgs(a, `1`)...); err != nil {
		t.Fatal(err)
	}
	if got := announced(); !slices.Equal(got, []string{"hand"}) {
		t.Errorf("complete_tasks with pgflow.claim_follows set: announced %q, want [hand]", got)
	}
	e.exec("SELECT pgflow.cancel_run($1)", run)
}

func TestNotify(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("noisy", "", step{slug: "each", fanout: true})
	conn, err := e.pool.Acquire(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(e.ctx, "LISTEN pgflow_tasks; LISTEN pgflow_runs"); err != nil {
		t.Fatal(err)
	}
	wait := func(channel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		defer cancel()
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v", channel, err)
		}
		if n.Channel != channel {
			t.Fatalf("notification on %s (%s), want %s", n.Channel, n.Payload, channel)
		}
		return n.Payload
	}

	run := e.start("noisy", `[1, 2, 3]`)
	if p := wait("pgflow_tasks"); p != "noisy" {
		t.Fatalf("tasks payload %q, want the flow slug", p)
	}
	tasks := e.claim(3, "noisy.each")
	if _, err := completeBatch(e.ctx, e.pool, tasks, func(task) string { return "0" }); err != nil {
		t.Fatal(err)
	}
	p := wait("pgflow_runs")
	var ended struct {
		Status string   `json:"status"`
		RunIDs []string `json:"run_ids"`
	}
	mustUnmarshal(t, p, &ended)
	if ended.Status != "completed" || len(ended.RunIDs) != 1 || ended.RunIDs[0] != run {
		t.Fatalf("runs payload %s", p)
	}

	// One notification per statement: a batch of runs started together
	// notifies the task channel once.
	if _, err := e.pool.Exec(e.ctx, "SELECT pgflow.start_flows('noisy', array_fill('[1]'::jsonb, ARRAY[50]))"); err != nil {
		t.Fatal(err)
	}
	wait("pgflow_tasks")
	ctx, cancel := context.WithTimeout(e.ctx, 200*time.Millisecond)
	defer cancel()
	if n, err := conn.Conn().WaitForNotification(ctx); err == nil {
		t.Fatalf("second notification for one statement: %s %s", n.Channel, n.Payload)
	}
	if !strings.Contains(fmt.Sprint(ctx.Err()), "deadline") {
		t.Fatalf("unexpected: %v", ctx.Err())
	}
}
