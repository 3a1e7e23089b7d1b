package schema_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/testdb"
)

// engine drives the SQL API of one fresh, migrated database.
type engine struct {
	t    testing.TB
	ctx  context.Context
	pool *pgxpool.Pool
}

func newEngine(t testing.TB) *engine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	pool := testdb.NewPool(t)
	testdb.CheckStatusesAtEnd(t, pool)
	return &engine{t: t, ctx: ctx, pool: pool}
}

// step describes one add_step call.
type step struct {
	slug   string
	deps   []string
	fanout bool
	extra  string // more named arguments, e.g. "max_attempts => 2"
}

// flow creates a flow (flowArgs: extra named arguments of create_flow) and its steps.
func (e *engine) flow(slug, flowArgs string, steps ...step) {
	e.t.Helper()
	if flowArgs != "" {
		flowArgs = ", " + flowArgs
	}
	e.exec("SELECT pgflow.create_flow($1"+flowArgs+")", slug)
	for _, s := range steps {
		typ := "single"
		if s.fanout {
			typ = "fanout"
		}
		extra := ""
		if s.extra != "" {
			extra = ", " + s.extra
		}
		deps := s.deps
		if deps == nil {
			deps = []string{}
		}
		e.exec("SELECT pgflow.add_step($1, $2, deps => $3, step_type => $4"+extra+")", slug, s.slug, deps, typ)
	}
}

func (e *engine) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(e.ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// scalar runs a query returning one value.
func scalar[T any](e *engine, sql string, args ...any) T {
	e.t.Helper()
	var v T
	if err := e.pool.QueryRow(e.ctx, sql, args...).Scan(&v); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func (e *engine) start(flow, input string) string {
	e.t.Helper()
	return scalar[string](e, "SELECT pgflow.start_flow($1, $2::jsonb)::text", flow, input)
}

// startErr starts a run expecting an error and returns it.
func (e *engine) startErr(flow, input string) *pgconn.PgError {
	e.t.Helper()
	_, err := e.pool.Exec(e.ctx, "SELECT pgflow.start_flow($1, $2::jsonb)", flow, input)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		e.t.Fatalf("start_flow(%s, %s): want a Postgres error, got %v", flow, input, err)
	}
	return pgErr
}

// task is one claimed task.
type task struct {
	RunID    string
	Flow     string
	Step     string
	Index    int
	Attempt  int
	Timeout  time.Duration
	RunInput string
	Deps     string
	Item     string
}

// claim claims up to limit tasks of the given "flow.step" names.
func (e *engine) claim(limit int, steps ...string) []task {
	e.t.Helper()
	return claimOn(e.t, e.ctx, e.pool, limit, steps...)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// splitSteps splits "flow.step" names into the flow and step slug arrays
// the claim functions take.
func splitSteps(steps []string) (flows, slugs []string) {
	for _, s := range steps {
		f, st, _ := strings.Cut(s, ".")
		flows, slugs = append(flows, f), append(slugs, st)
	}
	return flows, slugs
}

func claimOn(t testing.TB, ctx context.Context, q querier, limit int, steps ...string) []task {
	t.Helper()
	flows, slugs := splitSteps(steps)
	rows, err := q.Query(ctx, `
		SELECT run_id::text, flow_slug, step_slug, task_index, attempt, timeout,
		       coalesce(run_input::text, ''), coalesce(deps_output::text, ''), coalesce(item::text, '')
		FROM pgflow.claim_tasks('00000000-0000-0000-0000-000000000001', $1, $2, $3)
		ORDER BY flow_slug, step_slug, task_index`, flows, slugs, limit)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	tasks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (task, error) {
		var k task
		err := r.Scan(&k.RunID, &k.Flow, &k.Step, &k.Index, &k.Attempt, &k.Timeout, &k.RunInput, &k.Deps, &k.Item)
		return k, err
	})
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	return tasks
}

func (e *engine) complete(k task, output string) bool {
	e.t.Helper()
	return scalar[bool](e, "SELECT pgflow.complete_task($1::uuid, $2, $3, $4, $5::jsonb)",
		k.RunID, k.Step, k.Index, k.Attempt, output)
}

// fail fails a task's attempt and returns the task status afterwards ("" when fenced out).
func (e *engine) fail(k task, msg string, permanent bool) string {
	e.t.Helper()
	return scalar[string](e, "SELECT coalesce(pgflow.fail_task($1::uuid, $2, $3, $4, $5, $6), '')",
		k.RunID, k.Step, k.Index, k.Attempt, msg, permanent)
}

// runState is what get_run returns.
type runState struct {
	RunID          string          `json:"run_id"`
	Status         string          `json:"status"`
	Output         json.RawMessage `json:"output"`
	RemainingSteps int             `json:"remaining_steps"`
	ErrorStep      *string         `json:"error_step"`
	ErrorTaskIndex *int            `json:"error_task_index"`
	ErrorMessage   *string         `json:"error_message"`
	Steps          []stepState     `json:"steps"`
}

type stepState struct {
	Slug           string  `json:"step_slug"`
	Status         string  `json:"status"`
	TotalTasks     *int    `json:"total_tasks"`
	RemainingTasks *int    `json:"remaining_tasks"`
	ErrorMessage   *string `json:"error_message"`
}

func (e *engine) run(runID string) runState {
	e.t.Helper()
	var raw []byte
	if err := e.pool.QueryRow(e.ctx, "SELECT pgflow.get_run($1::uuid)", runID).Scan(&raw); err != nil {
		e.t.Fatalf("get_run: %v", err)
	}
	var r runState
	if err := json.Unmarshal(raw, &r); err != nil {
		e.t.Fatalf("get_run: %v", err)
	}
	return r
}

// stepStatuses maps each step of a run to its status.
func (r runState) stepStatuses() map[string]string {
	m := map[string]string{}
	for _, s := range r.Steps {
		m[s.Slug] = s.Status
	}
	return m
}

// stepOutput returns a step's stored output as compact JSON.
func (e *engine) stepOutput(runID, step string) string {
	e.t.Helper()
	return scalar[string](e, "SELECT coalesce(output::text, '') FROM pgflow.step_states WHERE run_id = $1::uuid AND step_slug = $2", runID, step)
}

// liveTasks counts a run's tasks that are queued or started.
func (e *engine) liveTasks(runID string) int {
	e.t.Helper()
	return scalar[int](e, "SELECT count(*)::int FROM pgflow.step_tasks WHERE run_id = $1::uuid AND status IN ('queued', 'started')", runID)
}

// expireLeases moves the leases of a run's started tasks into the past.
func (e *engine) expireLeases(runID string) {
	e.t.Helper()
	e.exec("UPDATE pgflow.step_tasks SET visible_at = now() - interval '1 second' WHERE run_id = $1::uuid AND status = 'started'", runID)
}

// makeVisible makes a run's queued tasks claimable now (skipping delays).
func (e *engine) makeVisible(runID string) {
	e.t.Helper()
	e.exec("UPDATE pgflow.step_tasks SET visible_at = now() WHERE run_id = $1::uuid AND status = 'queued'", runID)
}

// jsonEqual compares two JSON texts by value.
func jsonEqual(t testing.TB, what, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("%s: invalid JSON %q: %v", what, got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: invalid want JSON %q: %v", what, want, err)
	}
	if diff := cmp.Diff(w, g); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", what, diff)
	}
}
