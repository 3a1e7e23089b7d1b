package schema_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgflow-go/pgflow/internal/testdb"
)

func TestLinearRunCompletes(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("linear", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}}, step{slug: "c", deps: []string{"b"}})
	run := e.start("linear", `{"n": 1}`)

	for i, want := range []struct{ step, deps, output string }{
		{"a", "", `{"a": 1}`},
		{"b", `{"a": {"a": 1}}`, `"b-out"`},
		{"c", `{"b": "b-out"}`, `[1, 2]`},
	} {
		tasks := e.claim(10, "linear.a", "linear.b", "linear.c")
		if len(tasks) != 1 || tasks[0].Step != want.step {
			t.Fatalf("round %d: claimed %+v, want one task of %s", i, tasks, want.step)
		}
		jsonEqual(t, "run input", tasks[0].RunInput, `{"n": 1}`)
		if want.deps == "" {
			if tasks[0].Deps != "" {
				t.Errorf("step %s: deps %s, want none", want.step, tasks[0].Deps)
			}
		} else {
			jsonEqual(t, "deps of "+want.step, tasks[0].Deps, want.deps)
		}
		if !e.complete(tasks[0], want.output) {
			t.Fatalf("complete %s: not applied", want.step)
		}
	}
	r := e.run(run)
	if r.Status != "completed" || r.RemainingSteps != 0 {
		t.Fatalf("run: status %s, remaining %d", r.Status, r.RemainingSteps)
	}
	jsonEqual(t, "run output", string(r.Output), `{"c": [1, 2]}`)
}

func TestDiamondWaitsForBothDeps(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("diamond", "",
		step{slug: "root"},
		step{slug: "left", deps: []string{"root"}},
		step{slug: "right", deps: []string{"root"}},
		step{slug: "join", deps: []string{"left", "right"}})
	all := []string{"diamond.root", "diamond.left", "diamond.right", "diamond.join"}
	run := e.start("diamond", `{}`)

	root := e.claim(10, all...)
	e.complete(root[0], `"r"`)
	branches := e.claim(10, all...)
	if len(branches) != 2 || branches[0].Step != "left" || branches[1].Step != "right" {
		t.Fatalf("claimed %+v, want left and right", branches)
	}
	e.complete(branches[0], `"L"`)
	if got := e.claim(10, all...); len(got) != 0 {
		t.Fatalf("join started before both deps completed: %+v", got)
	}
	e.complete(branches[1], `"R"`)
	join := e.claim(10, all...)
	if len(join) != 1 || join[0].Step != "join" {
		t.Fatalf("claimed %+v, want join", join)
	}
	jsonEqual(t, "join deps", join[0].Deps, `{"left": "L", "right": "R"}`)
	e.complete(join[0], `{"ok": true}`)

	r := e.run(run)
	if r.Status != "completed" {
		t.Fatalf("run status %s", r.Status)
	}
	jsonEqual(t, "run output", string(r.Output), `{"join": {"ok": true}}`)
}

// fanoutFlow is prepare (single) -> items (fanout) -> gather (single).
func fanoutFlow(e *engine, slug string) {
	e.flow(slug, "",
		step{slug: "prepare"},
		step{slug: "items", deps: []string{"prepare"}, fanout: true},
		step{slug: "gather", deps: []string{"items"}})
}

func TestFanout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		prepared string   // output of prepare
		outputs  []string // output of each fanout task, by index
		order    []int    // order in which tasks are completed
		want     string   // aggregated output of the fanout step
	}{
		{"three in reverse", `["a", "b", "c"]`, []string{`"A"`, `"B"`, `"C"`}, []int{2, 1, 0}, `["A", "B", "C"]`},
		{"three interleaved", `["a", "b", "c"]`, []string{`1`, `2`, `3`}, []int{1, 2, 0}, `[1, 2, 3]`},
		{"one element", `[{"x": 1}]`, []string{`{"y": 2}`}, []int{0}, `[{"y": 2}]`},
		{"null outputs keep their positions", `[1, 2, 3, 4]`, []string{`null`, `"b"`, `null`, `"d"`}, []int{3, 0, 2, 1}, `[null, "b", null, "d"]`},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t)
			slug := fmt.Sprintf("fan%d", i)
			fanoutFlow(e, slug)
			run := e.start(slug, `{}`)
			prep := e.claim(10, slug+".prepare")
			e.complete(prep[0], tc.prepared)

			tasks := e.claim(100, slug+".items")
			var elems []any
			mustUnmarshal(t, tc.prepared, &elems)
			if len(tasks) != len(elems) {
				t.Fatalf("claimed %d fanout tasks, want %d", len(tasks), len(elems))
			}
			for i, k := range tasks {
				if k.Index != i {
					t.Errorf("task %d has index %d", i, k.Index)
				}
				jsonEqual(t, fmt.Sprintf("item of task %d", i), k.Item, mustMarshal(t, elems[i]))
				if k.Deps != "" {
					t.Errorf("fanout task got deps %s", k.Deps)
				}
			}
			for n, idx := range tc.order {
				e.complete(tasks[idx], tc.outputs[idx])
				if n < len(tc.order)-1 && e.stepOutput(run, "items") != "" {
					t.Fatalf("fanout output set before its last task completed")
				}
			}
			jsonEqual(t, "fanout output", e.stepOutput(run, "items"), tc.want)
			gather := e.claim(10, slug+".gather")
			if len(gather) != 1 {
				t.Fatalf("gather not started: %+v", gather)
			}
			jsonEqual(t, "gather deps", gather[0].Deps, `{"items": `+tc.want+`}`)
		})
	}
}

// TestOutputsReadAsJSONB: step and run outputs are stored as json text,
// and the objects built from them (a run's output, a task's dependencies)
// read exactly as jsonb prints them: keys shorter first, then bytewise.
// A fanout over a stored output gets each element as its item.
func TestOutputsReadAsJSONB(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("texts", "",
		step{slug: "src"},
		step{slug: "each", deps: []string{"src"}, fanout: true},
		step{slug: "b", deps: []string{"src"}},
		step{slug: "zz_join", deps: []string{"each", "b"}},
		step{slug: "aa", deps: []string{"src"}},
		step{slug: "long_leaf_name", deps: []string{"src"}})
	all := []string{"texts.src", "texts.each", "texts.b", "texts.zz_join", "texts.aa", "texts.long_leaf_name"}
	run := e.start("texts", `{}`)

	src := e.claim(10, all...)
	e.complete(src[0], `[{"k":1,"a":[true,null]}, "two",   3.50]`)
	claimed := e.claim(10, all...)
	if len(claimed) != 6 { // aa, b, each x3, long_leaf_name
		t.Fatalf("claimed %d tasks, want 6: %+v", len(claimed), claimed)
	}
	for _, k := range claimed {
		if k.Step == "each" {
			want := []string{`{"a": [true, null], "k": 1}`, `"two"`, `3.50`}[k.Index]
			if k.Item != want {
				t.Errorf("item %d = %s, want %s", k.Index, k.Item, want)
			}
		}
		e.complete(k, fmt.Sprintf(`{"step": %q, "i": %d}`, k.Step, k.Index))
	}
	join := e.claim(10, all...)
	if len(join) != 1 || join[0].Step != "zz_join" {
		t.Fatalf("claimed %+v, want zz_join", join)
	}
	wantDeps := `{"b": {"i": 0, "step": "b"}, "each": [{"i": 0, "step": "each"}, {"i": 1, "step": "each"}, {"i": 2, "step": "each"}]}`
	if join[0].Deps != wantDeps {
		t.Errorf("deps\n got %s\nwant %s", join[0].Deps, wantDeps)
	}
	e.complete(join[0], `"done"`)

	out := scalar[string](e, "SELECT output::text FROM pgflow.runs WHERE run_id = $1::uuid", run)
	want := `{"aa": {"i": 0, "step": "aa"}, "zz_join": "done", "long_leaf_name": {"i": 0, "step": "long_leaf_name"}}`
	if out != want {
		t.Errorf("run output\n got %s\nwant %s", out, want)
	}
	if asJSONB := scalar[string](e, "SELECT output::jsonb::text FROM pgflow.runs WHERE run_id = $1::uuid", run); out != asJSONB {
		t.Errorf("run output %s reads differently as jsonb: %s", out, asJSONB)
	}
}

func TestEmptyFanout(t *testing.T) {
	t.Parallel()
	t.Run("completes at once and starts its dependent", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		fanoutFlow(e, "empty")
		run := e.start("empty", `{}`)
		prep := e.claim(10, "empty.prepare")
		e.complete(prep[0], `[]`)
		if got := e.stepOutput(run, "items"); got != "[]" {
			t.Fatalf("fanout output %q, want []", got)
		}
		if s := e.run(run).stepStatuses()["items"]; s != "completed" {
			t.Fatalf("fanout status %s", s)
		}
		gather := e.claim(10, "empty.items", "empty.gather")
		if len(gather) != 1 || gather[0].Step != "gather" {
			t.Fatalf("claimed %+v, want gather", gather)
		}
		jsonEqual(t, "gather deps", gather[0].Deps, `{"items": []}`)
	})
	t.Run("a chain of empty fanouts completes in one call", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("chain", "",
			step{slug: "prepare"},
			step{slug: "first", deps: []string{"prepare"}, fanout: true},
			step{slug: "second", deps: []string{"first"}, fanout: true},
			step{slug: "last", deps: []string{"second"}})
		run := e.start("chain", `{}`)
		prep := e.claim(10, "chain.prepare")
		e.complete(prep[0], `[]`)
		st := e.run(run).stepStatuses()
		if st["first"] != "completed" || st["second"] != "completed" || st["last"] != "started" {
			t.Fatalf("step statuses %v", st)
		}
	})
	t.Run("a run of taskless steps completes inside start_flow", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("taskless", "",
			step{slug: "first", fanout: true},
			step{slug: "second", deps: []string{"first"}, fanout: true})
		run := e.start("taskless", `[]`)
		r := e.run(run)
		if r.Status != "completed" {
			t.Fatalf("run status %s, want completed", r.Status)
		}
		jsonEqual(t, "run output", string(r.Output), `{"second": []}`)
	})
}

func TestFanoutOverNonArrayFailsTheRun(t *testing.T) {
	t.Parallel()
	for i, tc := range []struct{ output, typ string }{
		{`{"a": 1}`, "object"},
		{`"text"`, "string"},
		{`42`, "number"},
		{`true`, "boolean"},
		{`null`, "null"},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t)
			slug := fmt.Sprintf("bad%d", i)
			fanoutFlow(e, slug)
			run := e.start(slug, `{}`)
			prep := e.claim(10, slug+".prepare")
			// No error reaches the caller; the producing task counts as completed.
			if !e.complete(prep[0], tc.output) {
				t.Fatalf("complete: not applied")
			}
			r := e.run(run)
			if r.Status != "failed" {
				t.Fatalf("run status %s, want failed", r.Status)
			}
			msg := deref(r.ErrorMessage)
			for _, want := range []string{`"items"`, `"prepare"`, tc.typ} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not name %s", msg, want)
				}
			}
			if deref(r.ErrorStep) != "items" {
				t.Errorf("error step %q, want items", deref(r.ErrorStep))
			}
			jsonEqual(t, "kept output", e.stepOutput(run, "prepare"), tc.output)
			if n := e.liveTasks(run); n != 0 {
				t.Errorf("%d tasks of the failed run are still live", n)
			}
			if got := e.claim(10, slug+".prepare", slug+".items", slug+".gather"); len(got) != 0 {
				t.Errorf("claimed %+v from a failed run", got)
			}
		})
	}
}

func TestRootFanout(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("root", "", step{slug: "each", fanout: true}, step{slug: "sum", deps: []string{"each"}})
	run := e.start("root", `[10, 20]`)
	tasks := e.claim(10, "root.each")
	if len(tasks) != 2 || tasks[0].Item != "10" || tasks[1].Item != "20" {
		t.Fatalf("claimed %+v", tasks)
	}
	e.complete(tasks[1], `21`)
	e.complete(tasks[0], `11`)
	sum := e.claim(10, "root.sum")
	jsonEqual(t, "sum deps", sum[0].Deps, `{"each": [11, 21]}`)

	runsBefore := scalar[int](e, "SELECT count(*)::int FROM pgflow.runs")
	for _, input := range []string{`{"a": 1}`, `"x"`, `3`, `false`, `null`} {
		pgErr := e.startErr("root", input)
		if pgErr.Code != "PF002" || !strings.Contains(pgErr.Message, `"root"`) || !strings.Contains(pgErr.Message, "JSON array") {
			t.Errorf("input %s: error %s %q", input, pgErr.Code, pgErr.Message)
		}
	}
	if n := scalar[int](e, "SELECT count(*)::int FROM pgflow.runs"); n != runsBefore {
		t.Errorf("rejected inputs created %d runs", n-runsBefore)
	}
	jsonEqual(t, "input kept", scalar[string](e, "SELECT input::text FROM pgflow.runs WHERE run_id = $1::uuid", run), `[10, 20]`)
}

// TestStartRootFanouts: one call starting several runs of a flow whose
// root step fans out gives each run its own input and a task per element of
// it, in order and exactly as jsonb holds the element; a run over [] ends
// at once. An input that is not an array is named by its position, and
// then no run starts.
func TestStartRootFanouts(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("roots", "", step{slug: "each", fanout: true})
	inputs := [][]string{
		{`1`, `"two"`, `null`, `{"b": [true, null], "a": 1.50}`, `[]`, `"\"é\" \\ \u263a"`, `1e2`, `-0`},
		{},
		{`{"k": "x"}`},
		{`[[1], [2, [3]]]`, `false`},
	}
	texts := make([]string, len(inputs))
	for i, elems := range inputs {
		texts[i] = "[" + strings.Join(elems, ", ") + "]"
	}
	runs := scalar[[]string](e, "SELECT pgflow.start_flows('roots', $1::jsonb[])::text[]", texts)
	if len(runs) != len(inputs) {
		t.Fatalf("started %d runs, want %d", len(runs), len(inputs))
	}
	for i, run := range runs {
		jsonEqual(t, fmt.Sprintf("input of run %d", i), scalar[string](e, "SELECT input::text FROM pgflow.runs WHERE run_id = $1::uuid", run), texts[i])
		items := scalar[[]string](e, `SELECT coalesce(array_agg(item::text ORDER BY task_index), '{}') FROM pgflow.step_tasks
			WHERE run_id = $1::uuid AND step_slug = 'each'`, run)
		want := make([]string, len(inputs[i]))
		for k, elem := range inputs[i] {
			want[k] = scalar[string](e, "SELECT $1::jsonb::text", elem)
		}
		if diff := cmp.Diff(want, items); diff != "" {
			t.Errorf("items of run %d (-want +got):\n%s", i, diff)
		}
		if len(inputs[i]) == 0 {
			if r := e.run(run); r.Status != "completed" {
				t.Errorf("run %d over []: status %q, want completed", i, r.Status)
			}
		}
	}

	runsBefore := scalar[int](e, "SELECT count(*)::int FROM pgflow.runs")
	for _, tc := range []struct {
		inputs []*string
		want   string
	}{
		{[]*string{new(`[1]`), new(`{"a": 1}`), new(`[2]`)}, "got object (input 2 of 3)"},
		{[]*string{nil, new(`[1]`)}, "got null (input 1 of 2)"},
		{[]*string{new(`[1]`), new(`"x"`)}, "got string (input 2 of 2)"},
	} {
		_, err := e.pool.Exec(e.ctx, "SELECT pgflow.start_flows('roots', $1::jsonb[])", tc.inputs)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "PF002" || !strings.HasSuffix(pgErr.Message, tc.want) {
			t.Errorf("inputs %v: error %v, want PF002 ending %q", tc.inputs, err, tc.want)
		}
	}
	if n := scalar[int](e, "SELECT count(*)::int FROM pgflow.runs"); n != runsBefore {
		t.Errorf("rejected calls created %d runs", n-runsBefore)
	}
}

// TestStartFlowsArrays: start_flows takes its inputs and run ids element
// by element in storage order, whatever the arrays' bounds and dimensions;
// a missing input is JSON null; root steps of both kinds start together,
// each with its own start delay, in runs named by the caller.
func TestStartFlowsArrays(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("one", "", step{slug: "a"})
	e.flow("mixed", "",
		step{slug: "a", extra: "start_delay => '20 minutes'"},
		step{slug: "b", fanout: true, extra: "start_delay => '10 minutes'"},
		step{slug: "c", deps: []string{"a", "b"}})
	tests := []struct {
		name   string
		flow   string
		call   string // the inputs and run ids arguments
		inputs []string
		runIDs []string // run ids given, if any
	}{
		{"from index 0", "one", `'[0:1]={"1","2"}'::jsonb[]`, []string{`1`, `2`}, nil},
		{"from index 2", "one", `'[2:3]={"1","2"}'::jsonb[]`, []string{`1`, `2`}, nil},
		{"two dimensions", "one", `ARRAY[['1','2'],['3','4']]::jsonb[]`, []string{`1`, `2`, `3`, `4`}, nil},
		{"a missing input", "one", `ARRAY[NULL, '{"k": 1}']::jsonb[]`, []string{`null`, `{"k": 1}`}, nil},
		{"run ids from index 0", "one",
			`'{"1","2"}'::jsonb[], '[0:1]={00000000-0000-7000-8000-00000000000a,00000000-0000-7000-8000-00000000000b}'::uuid[]`,
			[]string{`1`, `2`}, []string{"00000000-0000-7000-8000-00000000000a", "00000000-0000-7000-8000-00000000000b"}},
		{"root steps of both kinds", "mixed",
			`'{"[1, 2]","[3]","[]"}'::jsonb[], '{00000000-0000-7000-8000-00000000000c,00000000-0000-7000-8000-00000000000d,00000000-0000-7000-8000-00000000000e}'::uuid[]`,
			[]string{`[1, 2]`, `[3]`, `[]`},
			[]string{"00000000-0000-7000-8000-00000000000c", "00000000-0000-7000-8000-00000000000d", "00000000-0000-7000-8000-00000000000e"}},
		{"root fanout from index 0", "mixed", `'[0:1]={"[4]","[5, 6]"}'::jsonb[]`, []string{`[4]`, `[5, 6]`}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runs := scalar[[]string](e, "SELECT pgflow.start_flows('"+tc.flow+"', "+tc.call+")::text[]")
			if len(runs) != len(tc.inputs) {
				t.Fatalf("started %d runs, want %d", len(runs), len(tc.inputs))
			}
			if tc.runIDs != nil {
				if diff := cmp.Diff(tc.runIDs, runs); diff != "" {
					t.Errorf("run ids (-want +got):\n%s", diff)
				}
			}
			for i, run := range runs {
				jsonEqual(t, fmt.Sprintf("input of run %d", i), scalar[string](e, "SELECT input::text FROM pgflow.runs WHERE run_id = $1::uuid", run), tc.inputs[i])
				if tc.flow != "mixed" {
					continue
				}
				// a: one task, due in 20 minutes; b: a task per element, due in
				// 10 minutes (over [], b completes at once and no task is queued).
				tasks := scalar[[]string](e, `SELECT coalesce(array_agg(format('%s %s %s', step_slug, coalesce(item::text, '-'),
					round(extract(epoch FROM visible_at - now()) / 60)) ORDER BY step_slug, task_index), '{}')
					FROM pgflow.step_tasks WHERE run_id = $1::uuid`, run)
				var elems []json.RawMessage
				mustUnmarshal(t, tc.inputs[i], &elems)
				want := []string{"a - 20"}
				for _, el := range elems {
					want = append(want, fmt.Sprintf("b %s 10", el))
				}
				if diff := cmp.Diff(want, tasks); diff != "" {
					t.Errorf("tasks of run %d (-want +got):\n%s", i, diff)
				}
				if len(elems) == 0 {
					if got := e.run(run).stepStatuses()["b"]; got != "completed" {
						t.Errorf("run %d: fanout over [] is %q, want completed", i, got)
					}
				}
			}
		})
	}
}

func TestRetries(t *testing.T) {
	t.Parallel()
	t.Run("failure requeues after the backoff", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("retry", "max_attempts => 3, base_delay => '10 seconds'", step{slug: "a"})
		run := e.start("retry", `{}`)
		k := e.claim(1, "retry.a")[0]
		for n, wantDelay := range []float64{10, 20} {
			if got := e.fail(k, fmt.Sprintf("boom %d", n+1), false); got != "queued" {
				t.Fatalf("failure %d: task status %q, want queued", n+1, got)
			}
			delay := scalar[float64](e, "SELECT extract(epoch FROM visible_at - now()) FROM pgflow.step_tasks WHERE run_id = $1::uuid", run)
			if delay < wantDelay-2 || delay > wantDelay+0.5 {
				t.Errorf("failure %d: visible in %.1fs, want about %.0fs", n+1, delay, wantDelay)
			}
			if got := e.claim(1, "retry.a"); len(got) != 0 {
				t.Fatalf("failure %d: task claimable before its delay", n+1)
			}
			e.makeVisible(run)
			k = e.claim(1, "retry.a")[0]
			if k.Attempt != n+2 {
				t.Fatalf("attempt %d, want %d", k.Attempt, n+2)
			}
		}
		if got := e.fail(k, "boom 3", false); got != "failed" {
			t.Fatalf("last failure: task status %q, want failed", got)
		}
		r := e.run(run)
		if r.Status != "failed" || deref(r.ErrorStep) != "a" || deref(r.ErrorMessage) != "boom 3" {
			t.Fatalf("run %+v", r)
		}
		if r.stepStatuses()["a"] != "failed" {
			t.Errorf("step status %s", r.stepStatuses()["a"])
		}
	})
	t.Run("exhausting attempts removes the run's queued tasks", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("exhaust", "max_attempts => 5", step{slug: "each", fanout: true, extra: "max_attempts => 1"})
		run := e.start("exhaust", `[1, 2, 3, 4]`)
		k := e.claim(1, "exhaust.each")
		if got := e.fail(k[0], "bad item", false); got != "failed" {
			t.Fatalf("status %q: step option max_attempts => 1 should override the flow's 5", got)
		}
		r := e.run(run)
		if r.Status != "failed" || deref(r.ErrorTaskIndex) != 0 {
			t.Fatalf("run %+v", r)
		}
		if n := e.liveTasks(run); n != 0 {
			t.Fatalf("%d live tasks left", n)
		}
		if got := e.claim(10, "exhaust.each"); len(got) != 0 {
			t.Fatalf("claimed %+v", got)
		}
	})
	t.Run("permanent error fails at once", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("perm", "max_attempts => 5", step{slug: "a"})
		run := e.start("perm", `{}`)
		k := e.claim(1, "perm.a")[0]
		if got := e.fail(k, "invalid input", true); got != "failed" {
			t.Fatalf("status %q", got)
		}
		if r := e.run(run); r.Status != "failed" {
			t.Fatalf("run %s", r.Status)
		}
	})
	t.Run("step options override flow options", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("opts", "max_attempts => 2, base_delay => '1 second', timeout => '1 minute'",
			step{slug: "a", extra: "max_attempts => 4, base_delay => '30 seconds', timeout => '7 seconds'"},
			step{slug: "b", deps: []string{"a"}})
		e.start("opts", `{}`)
		k := e.claim(1, "opts.a")[0]
		if k.Timeout != 7*time.Second {
			t.Errorf("timeout %s, want the step's 7s", k.Timeout)
		}
		e.fail(k, "x", false)
		delay := scalar[float64](e, "SELECT extract(epoch FROM visible_at - now()) FROM pgflow.step_tasks WHERE step_slug = 'a'")
		if delay < 28 || delay > 30.5 {
			t.Errorf("retry in %.1fs, want the step's 30s", delay)
		}
		opts := scalar[string](e, "SELECT format('%s/%s/%s', max_attempts, base_delay, timeout) FROM pgflow.step_options WHERE step_slug = 'b'")
		if opts != "2/00:00:01/00:01:00" {
			t.Errorf("step b inherits %s, want the flow's 2/00:00:01/00:01:00", opts)
		}
	})
}

func TestExpiredLease(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("lease", "max_attempts => 2, base_delay => '0'", step{slug: "a"})
	run := e.start("lease", `{}`)
	first := e.claim(1, "lease.a")[0]
	if got := e.claim(1, "lease.a"); len(got) != 0 {
		t.Fatalf("a leased task was claimed again: %+v", got)
	}
	e.expireLeases(run)
	second := e.claim(1, "lease.a")
	if len(second) != 1 || second[0].Attempt != 2 {
		t.Fatalf("after lease expiry claimed %+v, want attempt 2", second)
	}
	failures, msg := scalar[int](e, "SELECT failures FROM pgflow.step_tasks WHERE run_id = $1::uuid", run),
		scalar[string](e, "SELECT error_message FROM pgflow.step_tasks WHERE run_id = $1::uuid", run)
	if failures != 1 || !strings.HasPrefix(msg, "timeout") {
		t.Errorf("after expiry: failures %d, error %q", failures, msg)
	}
	// The first attempt's late result is fenced out.
	if e.complete(first, `"late"`) {
		t.Fatalf("stale attempt applied")
	}
	e.expireLeases(run)
	if got := e.claim(1, "lease.a"); len(got) != 0 {
		t.Fatalf("claimed %+v after the last attempt expired", got)
	}
	r := e.run(run)
	if r.Status != "failed" || !strings.HasPrefix(deref(r.ErrorMessage), "timeout") {
		t.Fatalf("run %s, error %q; want failed with a timeout", r.Status, deref(r.ErrorMessage))
	}
}

func TestFencing(t *testing.T) {
	t.Parallel()
	t.Run("stale attempt after a re-claim", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("stale", "base_delay => '0'", step{slug: "a"})
		run := e.start("stale", `{}`)
		old := e.claim(1, "stale.a")[0]
		e.expireLeases(run)
		cur := e.claim(1, "stale.a")[0]
		if e.complete(old, `"old"`) {
			t.Fatal("stale completion applied")
		}
		if got := e.fail(old, "old failure", true); got != "" {
			t.Fatalf("stale failure applied: %q", got)
		}
		if !e.complete(cur, `"new"`) {
			t.Fatal("current completion not applied")
		}
		jsonEqual(t, "output", string(e.run(run).Output), `{"a": "new"}`)
	})
	t.Run("duplicate completion", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("dup", "", step{slug: "each", fanout: true})
		run := e.start("dup", `[1, 2, 3]`)
		tasks := e.claim(3, "dup.each")
		e.complete(tasks[0], `"first"`)
		if e.complete(tasks[0], `"second"`) {
			t.Fatal("duplicate completion applied")
		}
		if got := scalar[int](e, "SELECT remaining_tasks FROM pgflow.step_states WHERE run_id = $1::uuid", run); got != 2 {
			t.Fatalf("remaining tasks %d, want 2", got)
		}
		e.complete(tasks[1], `2`)
		e.complete(tasks[2], `3`)
		jsonEqual(t, "output", e.stepOutput(run, "each"), `["first", 2, 3]`)
	})
	t.Run("task of a failed or cancelled run", func(t *testing.T) {
		t.Parallel()
		e := newEngine(t)
		e.flow("ended", "max_attempts => 1", step{slug: "each", fanout: true})
		failed := e.start("ended", `[1, 2]`)
		tasks := e.claim(2, "ended.each")
		e.fail(tasks[0], "boom", false)
		if e.complete(tasks[1], `"late"`) {
			t.Fatal("completion applied to a failed run")
		}
		cancelled := e.start("ended", `[1, 2]`)
		tasks = e.claim(2, "ended.each")
		if !scalar[bool](e, "SELECT pgflow.cancel_run($1::uuid)", cancelled) {
			t.Fatal("cancel_run returned false")
		}
		if e.complete(tasks[0], `"late"`) || e.fail(tasks[1], "late", false) != "" {
			t.Fatal("result applied to a cancelled run")
		}
		for _, run := range []string{failed, cancelled} {
			r := e.run(run)
			if r.Output != nil && string(r.Output) != "null" {
				t.Errorf("run %s got output %s", run, r.Output)
			}
			if got := e.stepOutput(run, "each"); got != "" {
				t.Errorf("step output %s", got)
			}
		}
	})
}

func TestCancelRun(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("cancel", "", step{slug: "each", fanout: true}, step{slug: "after", deps: []string{"each"}})
	run := e.start("cancel", `[1, 2, 3]`)
	running := e.claim(1, "cancel.each")
	if !scalar[bool](e, "SELECT pgflow.cancel_run($1::uuid)", run) {
		t.Fatal("cancel_run returned false")
	}
	if e.liveTasks(run) != 0 {
		t.Fatal("cancelled run still has live tasks")
	}
	if got := e.claim(10, "cancel.each", "cancel.after"); len(got) != 0 {
		t.Fatalf("claimed %+v", got)
	}
	if e.complete(running[0], `1`) {
		t.Fatal("late completion applied")
	}
	r := e.run(run)
	if r.Status != "cancelled" {
		t.Fatalf("status %s", r.Status)
	}
	for slug, status := range r.stepStatuses() {
		if status != "cancelled" {
			t.Errorf("step %s is %s", slug, status)
		}
	}
	if scalar[bool](e, "SELECT pgflow.cancel_run($1::uuid)", run) {
		t.Error("cancelling an ended run returned true")
	}
	if _, err := e.pool.Exec(e.ctx, "SELECT pgflow.cancel_run(gen_random_uuid())"); err == nil || !strings.Contains(err.Error(), "PF004") {
		t.Errorf("cancelling an unknown run: %v", err)
	}
}

func TestStartDelay(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("delayed", "", step{slug: "a", extra: "start_delay => '1 hour'"}, step{slug: "b"})
	run := e.start("delayed", `{}`)
	got := e.claim(10, "delayed.a", "delayed.b")
	if len(got) != 1 || got[0].Step != "b" {
		t.Fatalf("claimed %+v, want only b", got)
	}
	delay := scalar[float64](e, "SELECT extract(epoch FROM visible_at - now()) FROM pgflow.step_tasks WHERE run_id = $1::uuid AND step_slug = 'a'", run)
	if delay < 3590 || delay > 3600.5 {
		t.Fatalf("a is visible in %.0fs, want 3600s", delay)
	}
	e.makeVisible(run)
	if got := e.claim(10, "delayed.a"); len(got) != 1 {
		t.Fatalf("claimed %+v after the delay", got)
	}
}

func TestClaimLimitsAndFilters(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("one", "", step{slug: "each", fanout: true}, step{slug: "other", fanout: true})
	e.flow("two", "", step{slug: "each", fanout: true})
	items := `[` + strings.TrimSuffix(strings.Repeat("0,", 20), ",") + `]`
	e.start("one", items)
	e.start("two", items)

	got := e.claim(7, "one.each")
	if len(got) != 7 {
		t.Fatalf("claimed %d, want the limit 7", len(got))
	}
	for _, k := range got {
		if k.Flow != "one" || k.Step != "each" {
			t.Fatalf("claimed %s.%s, asked for one.each only", k.Flow, k.Step)
		}
	}
	if got := e.claim(100, "two.each"); len(got) != 20 {
		t.Fatalf("claimed %d of two.each, want 20", len(got))
	}
	if got := e.claim(100, "one.each", "one.other"); len(got) != 33 {
		t.Fatalf("claimed %d, want the remaining 13 + 20", len(got))
	}

	// Two claimers in concurrent transactions get disjoint tasks.
	e.start("two", items)
	tx1, err := e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx1.Rollback(e.ctx)
	tx2, err := e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback(e.ctx)
	a := claimOn(t, e.ctx, tx1, 12, "two.each")
	b := claimOn(t, e.ctx, tx2, 12, "two.each")
	if len(a) != 12 || len(b) != 8 {
		t.Fatalf("claimers got %d and %d tasks, want 12 and 8", len(a), len(b))
	}
	seen := map[int]bool{}
	for _, k := range append(a, b...) {
		if seen[k.Index] {
			t.Fatalf("task %d claimed twice", k.Index)
		}
		seen[k.Index] = true
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestClaimSurvivesOrphanedTasks: tasks whose run was deleted by hand are
// cancelled by the next claim instead of breaking it for every worker.
func TestClaimSurvivesOrphanedTasks(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("orphans", "", step{slug: "each", fanout: true})
	gone := e.start("orphans", `[1, 2, 3]`)
	kept := e.start("orphans", `[4, 5]`)
	e.exec("DELETE FROM pgflow.runs WHERE run_id = $1::uuid", gone)

	got := e.claim(10, "orphans.each")
	if len(got) != 2 {
		t.Fatalf("claimed %d tasks, want the 2 of the remaining run", len(got))
	}
	for _, k := range got {
		if k.RunID != kept {
			t.Fatalf("claimed a task of run %s", k.RunID)
		}
	}
	if n := e.liveTasks(gone); n != 0 {
		t.Fatalf("%d orphaned tasks still live", n)
	}
}

// TestCompletionWithoutStepState: fanout tasks whose step state was deleted
// by hand are left as they are by a completion batch (nothing to count
// them in), while the batch's other tasks complete.
func TestCompletionWithoutStepState(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("stateless", "", step{slug: "each", fanout: true})
	gone := e.start("stateless", `[1, 2, 3]`)
	kept := e.start("stateless", `[4, 5, 6]`)
	tasks := e.claim(10, "stateless.each")
	e.exec("DELETE FROM pgflow.step_states WHERE run_id = $1::uuid", gone)

	var batch []task
	for _, k := range tasks {
		if k.Index > 0 {
			batch = append(batch, k)
		}
	}
	n, err := completeBatch(e.ctx, e.pool, batch, func(task) string { return "1" })
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d results applied, want the 2 of the run with its step state", n)
	}
	if got := scalar[int](e, "SELECT count(*)::int FROM pgflow.step_tasks WHERE run_id = $1::uuid AND status = 'started'", gone); got != 3 {
		t.Fatalf("%d tasks of the run without step state still started, want 3", got)
	}
	if got := scalar[int](e, "SELECT remaining_tasks FROM pgflow.step_states WHERE run_id = $1::uuid", kept); got != 1 {
		t.Fatalf("remaining tasks %d, want 1", got)
	}
}

// TestFailAndReleaseWithoutStepState: failures and releases of tasks whose
// step state was deleted by hand still reach the tasks (they find a task's
// step by its definition, not by its state).
func TestFailAndReleaseWithoutStepState(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("stateless", "max_attempts => 3", step{slug: "each", fanout: true})
	run := e.start("stateless", `[1, 2]`)
	tasks := e.claim(10, "stateless.each")
	if len(tasks) != 2 {
		t.Fatalf("claimed %d tasks, want 2", len(tasks))
	}
	e.exec("DELETE FROM pgflow.step_states WHERE run_id = $1::uuid", run)

	if got := e.fail(tasks[0], "boom", false); got != "queued" {
		t.Fatalf("failing a task without step state: %q, want queued", got)
	}
	k := tasks[1]
	if n := scalar[int](e, "SELECT pgflow.release_tasks(ARRAY[$1::uuid], ARRAY[$2], ARRAY[$3::int], ARRAY[$4::int])",
		k.RunID, k.Step, k.Index, k.Attempt); n != 1 {
		t.Fatalf("released %d tasks, want 1", n)
	}
	if got := scalar[int](e, "SELECT count(*)::int FROM pgflow.step_tasks WHERE run_id = $1::uuid AND status = 'queued'", run); got != 2 {
		t.Fatalf("%d tasks queued, want 2", got)
	}
}

// TestStepRecreatedByHand: a step whose definition is deleted and created
// again by hand (a new step number) while a run is under way still works
// for the tasks created after that: reports find a task's step number
// where its creation did, in the step definitions.
func TestStepRecreatedByHand(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("redone", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}})
	run := e.start("redone", `{}`)
	a := e.claim(10, "redone.a")
	if len(a) != 1 {
		t.Fatalf("claimed %d tasks of a, want 1", len(a))
	}
	e.exec(`DELETE FROM pgflow.deps WHERE flow_slug = 'redone'`)
	e.exec(`WITH gone AS (DELETE FROM pgflow.steps WHERE flow_slug = 'redone' AND step_slug = 'b' RETURNING *)
	        INSERT INTO pgflow.steps (flow_slug, step_slug, step_type, step_index, deps_count)
	        SELECT flow_slug, step_slug, step_type, step_index, deps_count FROM gone`)
	e.exec(`INSERT INTO pgflow.deps (flow_slug, step_slug, dep_slug, dep_index) VALUES ('redone', 'b', 'a', 0)`)

	if !e.complete(a[0], `1`) {
		t.Fatal("completing a did not apply")
	}
	b := e.claim(10, "redone.b")
	if len(b) != 1 {
		t.Fatalf("claimed %d tasks of b, want 1", len(b))
	}
	if got := e.fail(b[0], "once", false); got != "queued" {
		t.Fatalf("failing b: %q, want queued", got)
	}
	e.makeVisible(run)
	b = e.claim(10, "redone.b")
	if len(b) != 1 {
		t.Fatalf("claimed %d retries of b, want 1", len(b))
	}
	if !e.complete(b[0], `2`) {
		t.Fatal("completing b did not apply")
	}
	if r := e.run(run); r.Status != "completed" {
		t.Fatalf("run %s, want completed", r.Status)
	}
}

// TestLeafDeletedByHand: a leaf step that completed stays in the run output
// when its definition is deleted by hand before the run's last single step
// completes (the run output comes from the run's step states).
func TestLeafDeletedByHand(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("gone", "", step{slug: "x"}, step{slug: "y"})
	run := e.start("gone", `{}`)
	tasks := e.claim(10, "gone.x", "gone.y")
	if len(tasks) != 2 {
		t.Fatalf("claimed %d tasks, want 2", len(tasks))
	}
	x, y := pick(t, tasks, run, "x", 0), pick(t, tasks, run, "y", 0)
	if !e.complete(y, `"y"`) {
		t.Fatal("completing y did not apply")
	}
	e.exec(`DELETE FROM pgflow.steps WHERE flow_slug = 'gone' AND step_slug = 'y'`)
	if !e.complete(x, `"x"`) {
		t.Fatal("completing x did not apply")
	}
	r := e.run(run)
	if r.Status != "completed" {
		t.Fatalf("run %s, want completed", r.Status)
	}
	jsonEqual(t, "run output", string(r.Output), `{"x": "x", "y": "y"}`)
}

// TestReportsForUnknownTasks: complete and fail calls for tasks that do not
// exist change nothing and raise nothing.
func TestReportsForUnknownTasks(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("known", "", step{slug: "a"})
	run := e.start("known", `{}`)
	unknown := []task{
		{RunID: "00000000-0000-0000-0000-00000000abcd", Step: "a", Index: 0, Attempt: 1},
		{RunID: run, Step: "nope", Index: 0, Attempt: 1},
		{RunID: run, Step: "a", Index: 7, Attempt: 1},
		{RunID: run, Step: "a", Index: 0, Attempt: 99},
	}
	for _, k := range unknown {
		if e.complete(k, `1`) {
			t.Errorf("completing %+v applied", k)
		}
		if got := e.fail(k, "x", false); got != "" {
			t.Errorf("failing %+v returned %q", k, got)
		}
	}
	if n, err := completeBatch(e.ctx, e.pool, unknown, func(task) string { return "1" }); err != nil || n != 0 {
		t.Errorf("batch of unknown tasks: applied %d, %v", n, err)
	}
	if r := e.run(run); r.Status != "started" || e.liveTasks(run) != 1 {
		t.Fatalf("the run changed: %s, %d live tasks", r.Status, e.liveTasks(run))
	}
}

// TestInvalidStatusesAreFound checks the check that stands in for CHECK
// constraints on the runtime tables' statuses (see testdb.InvalidStatuses).
func TestInvalidStatusesAreFound(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("statuses", "", step{slug: "a"})
	run := e.start("statuses", `{}`)
	if bad, err := testdb.InvalidStatuses(e.ctx, e.pool); err != nil || len(bad) != 0 {
		t.Fatalf("a fresh run: %q, %v", bad, err)
	}
	e.exec(`UPDATE pgflow.step_tasks SET status = 'bogus' WHERE run_id = $1`, run)
	bad, err := testdb.InvalidStatuses(e.ctx, e.pool)
	if err != nil || len(bad) != 1 || !strings.Contains(bad[0], "step_tasks") || !strings.Contains(bad[0], "bogus") {
		t.Fatalf("got %q, %v; want the bogus task", bad, err)
	}
	e.exec(`UPDATE pgflow.step_tasks SET status = 'queued' WHERE run_id = $1`, run) // the check at the end passes
}

// Run ids are version 7 UUIDs: the time of the start in their first 48
// bits, so runs started later sort later (to the millisecond) and the
// indexes led by run_id grow at their right edge.
func TestRunIDsAreTimeOrdered(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("ordered", "", step{slug: "a"})
	var ids []string
	for range 3 {
		var batch []string
		if err := e.pool.QueryRow(e.ctx, "SELECT pgflow.start_flows('ordered', array_fill('{}'::jsonb, ARRAY[500]))::text[]").Scan(&batch); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, batch...)
		// The next batch starts in a later millisecond.
		var ms int64
		for first := nowMillis(t, e); ms <= first; ms = nowMillis(t, e) {
		}
	}
	seen := map[string]bool{}
	var last int64
	for i, id := range ids {
		if seen[id] {
			t.Fatalf("run id %s given twice", id)
		}
		seen[id] = true
		hexID := strings.ReplaceAll(id, "-", "")
		if hexID[12] != '7' || !strings.ContainsRune("89ab", rune(hexID[16])) {
			t.Fatalf("run id %s: want version 7, variant 10", id)
		}
		ms, err := strconv.ParseInt(hexID[:12], 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		if now := time.Now().UnixMilli(); ms < now-time.Minute.Milliseconds() || ms > now+time.Minute.Milliseconds() {
			t.Fatalf("run id %s holds the time %d, want about %d", id, ms, now)
		}
		if i%500 == 0 && ms <= last {
			t.Fatalf("batch %d starts at %d ms, not after the previous batch (%d ms)", i/500, ms, last)
		}
		last = max(last, ms)
	}
}

// nowMillis is the server's clock in Unix milliseconds.
func nowMillis(t *testing.T, e *engine) int64 {
	t.Helper()
	return scalar[int64](e, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
}

// TestClaimStepsTakeTurns: a step with a backlog (a wide fanout) does not
// keep a worker's other steps waiting until it is drained: the steps take
// turns at coming first in a claim, so two claims serve both steps.
func TestClaimStepsTakeTurns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		limit     int
		singles   int // runs of the single-step flow
		wantWide  int // over two claims
		wantSmall int
	}{
		{"a few waiting beside a backlog", 20, 5, 35, 5},
		{"two backlogs", 10, 30, 10, 10},
		{"one claim takes all", 500, 5, 300, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t)
			e.flow("wide", "", step{slug: "each", fanout: true})
			e.flow("small", "", step{slug: "only"})
			e.start("wide", `[`+strings.TrimSuffix(strings.Repeat(`1,`, 300), ",")+`]`)
			for range tt.singles {
				e.start("small", `{}`)
			}
			got := map[string]int{}
			seen := map[string]bool{}
			for range 2 {
				for _, k := range e.claim(tt.limit, "wide.each", "small.only") {
					key := fmt.Sprintf("%s/%s/%d", k.RunID, k.Step, k.Index)
					if seen[key] {
						t.Fatalf("task %s claimed twice", key)
					}
					seen[key] = true
					got[k.Flow]++
				}
			}
			if got["wide"] != tt.wantWide || got["small"] != tt.wantSmall {
				t.Fatalf("two claims took %d wide and %d small tasks, want %d and %d", got["wide"], got["small"], tt.wantWide, tt.wantSmall)
			}
		})
	}
}

// TestClaimTurnsArePerCaller: a worker passes its own claim numbers, so its
// steps take turns whatever other callers claim in between; expired leases
// are taken over in the same turns.
func TestClaimTurnsArePerCaller(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	for _, f := range []string{"a", "b", "c"} {
		e.flow(f, "max_attempts => 3", step{slug: "each", fanout: true})
		e.start(f, `[`+strings.TrimSuffix(strings.Repeat(`1,`, 60), ",")+`]`)
	}
	claim := func(limit int, turn int64, steps ...string) map[string]int {
		t.Helper()
		flows, slugs := splitSteps(steps)
		got := map[string]int{}
		rows, err := e.pool.Query(e.ctx, `SELECT flow_slug FROM pgflow.claim_tasks(gen_random_uuid(), $1, $2, $3, NULL, '2 seconds', $4)`,
			flows, slugs, limit, turn)
		if err != nil {
			t.Fatal(err)
		}
		flowsClaimed, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flowsClaimed {
			got[f]++
		}
		return got
	}
	// Queued tasks, then (after all leases expire) takeovers: each time two
	// claims of the worker serve both of its steps, while another caller's
	// claims go in between.
	for _, phase := range []string{"queued", "expired"} {
		if phase == "expired" {
			claim(500, 0, "a.each", "b.each", "c.each") // lease what is left
			e.exec("UPDATE pgflow.step_tasks SET visible_at = now() - interval '1 second' WHERE status = 'started'")
		}
		served := map[string]int{}
		for turn := int64(1); turn <= 2; turn++ {
			for f, n := range claim(10, turn, "a.each", "b.each") {
				served[f] += n
			}
			claim(10, 0, "c.each") // another caller
		}
		if served["a"] != 10 || served["b"] != 10 {
			t.Fatalf("%s: the worker's two claims took %d of a and %d of b, want 10 and 10", phase, served["a"], served["b"])
		}
	}
}
