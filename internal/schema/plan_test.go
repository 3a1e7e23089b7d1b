package schema_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestClaimUsesTheQueueIndex checks, with auto_explain, that the statements
// inside claim_tasks reach tasks through the partial indexes and never scan
// the task table, which here holds mostly completed tasks.
func TestClaimUsesTheQueueIndex(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("plans", "", step{slug: "each", fanout: true})
	e.exec(`SELECT pgflow.start_flows('plans', array_fill((SELECT jsonb_agg(g) FROM generate_series(1, 2000) g), ARRAY[5]))`)
	e.exec(`UPDATE pgflow.step_tasks SET status = 'completed', output = '1'`)
	e.start("plans", `[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]`)
	e.exec(`VACUUM ANALYZE pgflow.step_tasks`)

	conn, plans := explainingConn(t, e)
	// Several calls, so that PL/pgSQL's plan cache may switch to generic plans.
	for range 8 {
		if got := claimOn(t, e.ctx, conn, 1, "plans.each"); len(got) != 1 {
			t.Fatalf("claimed %d", len(got))
		}
	}
	var sawQueueIndex, sawTIDUpdate bool
	for _, p := range plans() {
		if strings.Contains(p, "Seq Scan on step_tasks") {
			t.Errorf("a claim statement scans the task table:\n%s", p)
		}
		sawQueueIndex = sawQueueIndex || strings.Contains(p, "step_tasks_queued_idx")
		sawTIDUpdate = sawTIDUpdate || (strings.Contains(p, "Update on step_tasks") && strings.Contains(p, "Tid Scan on step_tasks"))
	}
	if !sawQueueIndex {
		t.Errorf("no claim plan used step_tasks_queued_idx; plans:\n%s", strings.Join(plans(), "\n"))
	}
	if !sawTIDUpdate {
		t.Errorf("the claim's update does not reach its tasks by address; plans:\n%s", strings.Join(plans(), "\n"))
	}
}

// TestYoungTablesGetKeyedPlans runs chains on a database whose tables are
// new and never analyzed, the state in which the planner prices a scan of a
// whole table below an index lookup, and checks that no statement of the
// start, claim or completion path scans a runtime table: plans are made
// once per connection and kept while the tables grow.
func TestYoungTablesGetKeyedPlans(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("young", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}}, step{slug: "c", deps: []string{"b"}})
	conn, plans := explainingConn(t, e)
	for range 8 {
		var run string
		if err := conn.QueryRow(e.ctx, `SELECT pgflow.start_flow('young', '{}')::text`).Scan(&run); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"a", "b", "c"} {
			got := claimOn(t, e.ctx, conn, 10, "young.a", "young.b", "young.c")
			if len(got) != 1 || got[0].Step != want {
				t.Fatalf("claimed %+v, want one task of %s", got, want)
			}
			var applied int
			err := conn.QueryRow(e.ctx, `SELECT pgflow.complete_tasks(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::int], ARRAY[$4::int], ARRAY['1'::jsonb])`,
				got[0].RunID, got[0].Step, got[0].Index, got[0].Attempt).Scan(&applied)
			if err != nil || applied != 1 {
				t.Fatalf("complete %s: applied %d, %v", want, applied, err)
			}
		}
		if r := e.run(run); r.Status != "completed" {
			t.Fatalf("run %s", r.Status)
		}
	}
	claimUpdates := 0
	for _, p := range plans() {
		if strings.Contains(p, "Update on step_tasks") && strings.Contains(p, "claim_tasks.worker_id") {
			claimUpdates++
			if !strings.Contains(p, "Tid Scan on step_tasks") {
				t.Errorf("the claim's update does not reach its tasks by address:\n%s", p)
			}
		}
		for _, table := range []string{"runs", "step_states", "step_tasks"} {
			if strings.Contains(p, "Seq Scan on "+table+" ") {
				t.Errorf("a statement scans %s:\n%s", table, p)
			}
		}
	}
	if claimUpdates == 0 {
		t.Error("no plan of the claim's update was logged")
	}
}

// explainingConn opens a connection that logs the plan of every statement
// it runs, nested ones included, and returns it with a function that lists
// the plans logged so far. The test is skipped without auto_explain.
func explainingConn(t *testing.T, e *engine) (*pgx.Conn, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var plans []string
	cfg, err := pgx.ParseConfig(e.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		defer mu.Unlock()
		plans = append(plans, n.Message)
	}
	conn, err := pgx.ConnectConfig(e.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	for _, s := range []string{
		"LOAD 'auto_explain'",
		"SET auto_explain.log_min_duration = 0",
		"SET auto_explain.log_nested_statements = on",
		"SET auto_explain.log_level = notice",
	} {
		if _, err := conn.Exec(e.ctx, s); err != nil {
			t.Skipf("auto_explain unavailable: %v", err)
		}
	}
	return conn, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(plans)
	}
}

// TestReportsReachOnlyTheirRows runs failures (retried and final),
// releases, cancellation, completion, expired leases (taken over, then
// reaped) and fanouts (aggregated, empty, over a non-array) beside 300 runs
// they have nothing
// to do with, and checks with auto_explain that no statement filters its
// way through a runtime table: the rows a report visits are the ones it
// looks up by key.
func TestReportsReachOnlyTheirRows(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("bystanders", "", step{slug: "a"})
	e.flow("reported", "max_attempts => 2", step{slug: "a"}, step{slug: "b", deps: []string{"a"}})
	e.exec(`SELECT pgflow.start_flows('bystanders', array_fill('{}'::jsonb, ARRAY[300]))`)
	conn, plans := explainingConn(t, e)
	if _, err := conn.Exec(e.ctx, "SET auto_explain.log_analyze = on"); err != nil {
		t.Fatal(err)
	}
	var runs []string
	for range 4 {
		var run string
		if err := conn.QueryRow(e.ctx, `SELECT pgflow.start_flow('reported', '{}')::text`).Scan(&run); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run)
	}
	tasks := claimOn(t, e.ctx, conn, 10, "reported.a")
	if len(tasks) != 4 {
		t.Fatalf("claimed %d tasks, want 4", len(tasks))
	}
	byRun := map[string]task{}
	for _, k := range tasks {
		byRun[k.RunID] = k
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(e.ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Run 0: a failure that is retried, then a final one.
	k := byRun[runs[0]]
	exec(`SELECT pgflow.fail_tasks(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::int], ARRAY[$4::int], ARRAY['once'], ARRAY[false])`,
		k.RunID, k.Step, k.Index, k.Attempt)
	e.makeVisible(runs[0])
	retried := claimOn(t, e.ctx, conn, 10, "reported.a")
	if len(retried) != 1 {
		t.Fatalf("claimed %d retries, want 1", len(retried))
	}
	k = retried[0]
	exec(`SELECT pgflow.fail_tasks(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::int], ARRAY[$4::int], ARRAY['twice'], ARRAY[false])`,
		k.RunID, k.Step, k.Index, k.Attempt)
	// Run 1: released, then completed; run 2: cancelled.
	k = byRun[runs[1]]
	exec(`SELECT pgflow.release_tasks(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::int], ARRAY[$4::int])`, k.RunID, k.Step, k.Index, k.Attempt)
	again := claimOn(t, e.ctx, conn, 10, "reported.a")
	if len(again) != 1 {
		t.Fatalf("claimed %d released tasks, want 1", len(again))
	}
	k = again[0]
	exec(`SELECT pgflow.complete_tasks(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::int], ARRAY[$4::int], ARRAY['1'::jsonb])`, k.RunID, k.Step, k.Index, k.Attempt)
	exec(`SELECT pgflow.cancel_run($1::uuid)`, runs[2])
	// Run 3: its lease expires and is taken over, then expires again on
	// the last attempt and fails the run.
	for _, want := range []int{1, 0} {
		e.exec(`UPDATE pgflow.step_tasks SET visible_at = now() - interval '1 second' WHERE run_id = $1::uuid AND status = 'started'`, runs[3])
		if got := claimOn(t, e.ctx, conn, 10, "reported.a"); len(got) != want {
			t.Fatalf("claimed %d expired tasks, want %d", len(got), want)
		}
	}
	for i, want := range []string{"failed", "started", "cancelled", "failed"} {
		if r := e.run(runs[i]); r.Status != want {
			t.Fatalf("run %d: %s, want %s", i, r.Status, want)
		}
	}
	// A fanout over a step's output, completed in two batches (the second
	// aggregates it and starts the step after it), an empty fanout that
	// completes at once, and one over a non-array that fails its run.
	e.flow("fanned", "", step{slug: "a"}, step{slug: "each", deps: []string{"a"}, fanout: true},
		step{slug: "sum", deps: []string{"each"}})
	for _, output := range []string{`[1, 2, 3, 4, 5, 6]`, `[]`, `{"not": "an array"}`} {
		exec(`SELECT pgflow.start_flow('fanned', '{}')`)
		a := claimOn(t, e.ctx, conn, 10, "fanned.a")
		if len(a) != 1 {
			t.Fatalf("claimed %d tasks of a, want 1", len(a))
		}
		exec(`SELECT pgflow.complete_tasks(ARRAY[$1::uuid], ARRAY['a'], ARRAY[0], ARRAY[$2::int], ARRAY[$3::jsonb])`, a[0].RunID, a[0].Attempt, output)
	}
	each := claimOn(t, e.ctx, conn, 10, "fanned.each")
	if len(each) != 6 {
		t.Fatalf("claimed %d tasks of each, want 6", len(each))
	}
	for _, half := range [][]task{each[:3], each[3:]} {
		var runIDs, steps []string
		var indexes, attempts []int
		for _, k := range half {
			runIDs, steps = append(runIDs, k.RunID), append(steps, k.Step)
			indexes, attempts = append(indexes, k.Index), append(attempts, k.Attempt)
		}
		exec(`SELECT pgflow.complete_tasks($1::uuid[], $2, $3, $4, array_fill('1'::jsonb, ARRAY[3]))`, runIDs, steps, indexes, attempts)
	}
	if sum := claimOn(t, e.ctx, conn, 10, "fanned.sum"); len(sum) != 2 {
		t.Fatalf("claimed %d tasks of sum, want 2 (after the full and the empty fanout)", len(sum))
	}
	exec(`SELECT pgflow.next_visible_at('{fanned,reported}', '{sum,b}')`)
	exec(`SELECT pgflow.get_run($1::uuid)`, runs[1])

	removed := regexp.MustCompile(`Rows Removed by (?:Join )?Filter: (\d+)`)
	for _, p := range plans() {
		for _, m := range removed.FindAllStringSubmatch(p, -1) {
			if n, _ := strconv.Atoi(m[1]); n >= 100 {
				t.Errorf("a statement filtered %d rows:\n%s", n, p)
			}
		}
	}
}

// TestClaimAfterManyExpiredLeases: a worker that dies with a wide fanout in
// flight leaves every lease to expire. Each later claim takes over a batch
// of them; it must read about that batch, not the whole backlog of expired
// leases (it once read all of them, to look for last attempts among them,
// on every claim).
func TestClaimAfterManyExpiredLeases(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("crowd", "max_attempts => 3", step{slug: "each", fanout: true})
	run := e.start("crowd", `[`+strings.TrimSuffix(strings.Repeat(`1,`, 500), ",")+`]`)
	if got := e.claim(500, "crowd.each"); len(got) != 500 {
		t.Fatalf("claimed %d tasks, want 500", len(got))
	}
	e.expireLeases(run)
	conn, plans := explainingConn(t, e)
	if _, err := conn.Exec(e.ctx, "SET auto_explain.log_analyze = on"); err != nil {
		t.Fatal(err)
	}
	taken := claimOn(t, e.ctx, conn, 10, "crowd.each")
	if len(taken) != 10 {
		t.Fatalf("took over %d tasks, want 10", len(taken))
	}
	for _, k := range taken {
		if k.Attempt != 2 {
			t.Fatalf("took over %+v, want attempt 2", k)
		}
	}
	rows := regexp.MustCompile(`on step_tasks \w+ .*actual time=\S+ rows=(\d+) loops=(\d+)`)
	for _, p := range plans() {
		for _, m := range rows.FindAllStringSubmatch(p, -1) {
			n, _ := strconv.Atoi(m[1])
			loops, _ := strconv.Atoi(m[2])
			if n*loops >= 100 {
				t.Errorf("a claim of 10 read %d task rows:\n%s", n*loops, p)
			}
		}
	}
	if r := e.run(run); r.Status != "started" {
		t.Fatalf("run %s, want started", r.Status)
	}
}

// TestFanoutOutputReadsOnlyItsStep: completing a fanout step gathers its
// tasks' outputs, which must read that step's tasks only, not every task
// of the run (a task key led by run_id and then task_index did that: a
// 3-item fanout after a wide one read the wide one's index entries too).
func TestFanoutOutputReadsOnlyItsStep(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("twofans", "", step{slug: "a"}, step{slug: "wide", deps: []string{"a"}, fanout: true},
		step{slug: "b", deps: []string{"wide"}}, step{slug: "narrow", deps: []string{"b"}, fanout: true})
	e.exec(`SELECT pgflow.start_flow('twofans', '{}')`)
	completeAll := func(stepSlug, output string) {
		t.Helper()
		e.exec(`SELECT pgflow.complete_tasks(array_agg(run_id), array_agg(step_slug), array_agg(task_index), array_agg(attempt),
		                                     array_agg(`+output+`))
		        FROM pgflow.claim_tasks(gen_random_uuid(), '{twofans}', ARRAY[$1], 100000)`, stepSlug)
	}
	completeAll("a", `(SELECT jsonb_agg(i) FROM generate_series(1, 20000) i)`)
	completeAll("wide", `'1'::jsonb`)
	completeAll("b", `'[1, 2, 3]'::jsonb`)

	conn, plans := explainingConn(t, e)
	for _, s := range []string{"SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on"} {
		if _, err := conn.Exec(e.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	narrow := claimOn(t, e.ctx, conn, 10, "twofans.narrow")
	if len(narrow) != 3 {
		t.Fatalf("claimed %d tasks of narrow, want 3", len(narrow))
	}
	var runIDs, steps []string
	var indexes, attempts []int
	for _, k := range narrow {
		runIDs, steps = append(runIDs, k.RunID), append(steps, k.Step)
		indexes, attempts = append(indexes, k.Index), append(attempts, k.Attempt)
	}
	if _, err := conn.Exec(e.ctx, `SELECT pgflow.complete_tasks($1::uuid[], $2, $3, $4, array_fill('1'::jsonb, ARRAY[3]))`,
		runIDs, steps, indexes, attempts); err != nil {
		t.Fatal(err)
	}
	if r := e.run(narrow[0].RunID); r.Status != "completed" {
		t.Fatalf("run %s, want completed", r.Status)
	}
	buffers := regexp.MustCompile(`Buffers: shared hit=(\d+)(?: read=(\d+))?`)
	gathered := false
	for _, p := range plans() {
		if !strings.Contains(p, "json_agg(t.output") {
			continue
		}
		gathered = true
		for _, m := range buffers.FindAllStringSubmatch(p, -1) {
			hit, _ := strconv.Atoi(m[1])
			read, _ := strconv.Atoi(m[2])
			if hit+read > 50 {
				t.Errorf("gathering the 3 outputs of narrow read %d buffers:\n%s", hit+read, p)
			}
		}
	}
	if !gathered {
		t.Fatal("no plan gathered the outputs of narrow")
	}
}

// TestFailureLookupReadsOnlyItsTasks: fail_tasks looks up whether each
// failure is final before taking locks. It must reach each task by its
// whole key (run, step number, task index), with or without statistics: a
// step number joined in from another relation once let the planner look
// tasks up by part of the key, reading a whole run or step per failure.
func TestFailureLookupReadsOnlyItsTasks(t *testing.T) {
	for _, analyzed := range []bool{false, true} {
		t.Run(fmt.Sprintf("analyzed=%v", analyzed), func(t *testing.T) {
			t.Parallel()
			const n = 5000
			e := newEngine(t)
			e.flow("bystanders", "", step{slug: "a"})
			e.exec(`SELECT pgflow.start_flows('bystanders', array_fill('{}'::jsonb, ARRAY[300]))`)
			e.flow("wide", "max_attempts => 3", step{slug: "each", fanout: true})
			items := `[` + strings.TrimSuffix(strings.Repeat(`1,`, n), ",") + `]`
			batchRun := e.start("wide", items)
			oneRun := e.start("wide", items)
			tasks := e.claim(2*n, "wide.each")
			if len(tasks) != 2*n {
				t.Fatalf("claimed %d", len(tasks))
			}
			if analyzed {
				e.exec(`VACUUM ANALYZE pgflow.step_tasks`)
				e.exec(`VACUUM ANALYZE pgflow.step_states`)
			}
			conn, plans := explainingConn(t, e)
			for _, s := range []string{"SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on"} {
				if _, err := conn.Exec(e.ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			var runIDs, steps []string
			var indexes, attempts []int
			var last task
			for _, k := range tasks {
				if k.RunID == batchRun {
					runIDs, steps = append(runIDs, k.RunID), append(steps, k.Step)
					indexes, attempts = append(indexes, k.Index), append(attempts, k.Attempt)
				} else if k.RunID == oneRun && k.Index == n-1 {
					last = k
				}
			}
			var applied int
			if err := conn.QueryRow(e.ctx, `SELECT pgflow.fail_tasks($1::uuid[], $2, $3, $4, array_fill('boom'::text, ARRAY[$5::int]))`,
				runIDs, steps, indexes, attempts, n).Scan(&applied); err != nil || applied != n {
				t.Fatalf("fail_tasks applied %d, %v", applied, err)
			}
			var status string
			if err := conn.QueryRow(e.ctx, `SELECT pgflow.fail_task($1::uuid, $2, $3, $4, 'boom')`,
				last.RunID, last.Step, last.Index, last.Attempt).Scan(&status); err != nil || status != "queued" {
				t.Fatalf("fail_task: %q, %v", status, err)
			}
			top := regexp.MustCompile(`Buffers: shared hit=(\d+)(?: read=(\d+))?`)
			seen := 0
			for _, p := range plans() {
				if !strings.Contains(p, "SELECT x.flow_slug, x.failures") {
					continue
				}
				m := top.FindStringSubmatch(p) // the statement's total
				hit, _ := strconv.Atoi(m[1])
				read, _ := strconv.Atoi(m[2])
				limit := 100 // one task
				if seen == 0 {
					limit = 15 * n // n tasks, a few buffers each
				}
				if hit+read > limit {
					t.Errorf("failure lookup #%d read %d buffers (limit %d):\n%s", seen+1, hit+read, limit, p)
				}
				seen++
			}
			if seen != 2 {
				t.Fatalf("saw %d failure lookups, want 2", seen)
			}
		})
	}
}

// TestAnnouncementCheckReadsOnlyItsStep: after its claim, complete_and_claim
// looks for tasks left queued of the steps its completions started, each
// reached by its run and step number, not by its run alone (which would
// walk the run's other tasks: here a finished fanout's) nor by its step
// alone (every run's), in custom and in generic plans alike.
func TestAnnouncementCheckReadsOnlyItsStep(t *testing.T) {
	t.Parallel()
	const n, reports = 50, 8 // PL/pgSQL plans generically from the sixth call
	e := newEngine(t)
	e.flow("gathered", "", step{slug: "each", fanout: true}, step{slug: "sum", deps: []string{"each"}})
	items := `[` + strings.TrimSuffix(strings.Repeat(`1,`, n), ",") + `]`
	conn, plans := explainingConn(t, e)
	if _, err := conn.Exec(e.ctx, "SET auto_explain.log_analyze = on"); err != nil {
		t.Fatal(err)
	}
	outputs := make([]string, n)
	for i := range outputs {
		outputs[i] = "1"
	}
	for range reports {
		run := e.start("gathered", items)
		tasks := e.claim(n, "gathered.each")
		if len(tasks) != n {
			t.Fatalf("claimed %d", len(tasks))
		}
		// The claim asks for "each": "sum", started by the last completion,
		// is left queued and announced.
		var claimed int
		if err := conn.QueryRow(e.ctx, `SELECT count(run_id) FROM pgflow.complete_and_claim($1::uuid[], $2, $3, $4, $5::jsonb[],
			'00000000-0000-0000-0000-000000000001', '{gathered}', '{each}', 10)`,
			completeArgs(tasks, outputs...)...).Scan(&claimed); err != nil || claimed != 0 {
			t.Fatalf("complete_and_claim claimed %d, %v", claimed, err)
		}
		if got := e.claim(10, "gathered.sum"); len(got) != 1 || got[0].RunID != run {
			t.Fatalf("claimed %+v, want sum of the run", got)
		}
	}
	// The tasks' scan must be keyed by both: its index condition names
	// the run and the step number.
	cond := regexp.MustCompile(`on step_tasks t[^\n]*\n\s*Index Cond: ([^\n]*)`)
	seen := 0
	for _, p := range plans() {
		if !strings.Contains(p, "split_part(u.step, ':', 2)::uuid AS run_id") {
			continue
		}
		seen++
		m := cond.FindStringSubmatch(p)
		if m == nil || !strings.Contains(m[1], "run_id =") || !strings.Contains(m[1], "step_id =") {
			t.Errorf("the announcement check does not reach tasks by run and step:\n%s", p)
		}
	}
	if seen != reports {
		t.Errorf("%d plans of the announcement check, want %d", seen, reports)
	}
}
