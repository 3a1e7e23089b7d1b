package schema_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/schema"
	"github.com/pgflow-go/pgflow/internal/testdb"
	"github.com/pgflow-go/pgflow/sdk"
)

// The tests below connect as roles made for them. Roles belong to the whole
// server, so each test makes its own (random names) before its database,
// and drops them after the database is gone.

const (
	stmtAllowed = ""      // the statement succeeds
	stmtDenied  = "42501" // insufficient_privilege
)

// definerFunctions are the functions that run as their owner.
var definerFunctions = []string{
	"add_step", "cancel_run", "claim_tasks", "complete_and_claim", "complete_task", "complete_tasks", "create_flow",
	"fail_task", "fail_tasks", "get_run", "next_visible_at", "release_tasks", "start_flow",
	"start_flows", "update_flow_options", "update_step_options", "worker_heartbeat", "worker_stopped",
}

// genericPlanFunctions got plan_cache_mode = force_generic_plan and
// enable_seqscan = off in version 1.
var genericPlanFunctions = []string{
	"cancel_run", "claim_tasks", "complete_tasks", "fail_tasks", "next_visible_at", "release_tasks", "start_flows",
}

type loginRole struct{ name, password string }

// newLoginRole creates a login role named prefix_<random> (newRoleNamed:
// exactly name) and drops it when the test ends. Create roles before the test's
// database: cleanups run in reverse, so the database (and every privilege
// on it) is gone by the time the role is dropped.
func newLoginRole(t *testing.T, prefix string) loginRole {
	t.Helper()
	return newRoleNamed(t, prefix+"_"+randomHex(4))
}

func newRoleNamed(t *testing.T, name string) loginRole {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := loginRole{name: name, password: randomHex(12)}
	conn, err := pgx.Connect(ctx, testdb.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE ROLE "+pgx.Identifier{r.name}.Sanitize()+" LOGIN PASSWORD '"+r.password+"'")
	if code := sqlStateOf(err); code == stmtDenied {
		t.Skipf("the test server's role may not create roles: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, testdb.AdminURL())
		if err != nil {
			t.Errorf("drop role %s: %v", r.name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{r.name}.Sanitize()); err != nil {
			t.Errorf("drop role %s: %v", r.name, err)
		}
	})
	return r
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// poolAs connects to the database at dbURL as r.
func poolAs(t *testing.T, ctx context.Context, dbURL string, r loginRole) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User, cfg.ConnConfig.Password = r.name, r.password
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var user string
	if err := pool.QueryRow(ctx, "SELECT session_user").Scan(&user); err != nil || user != r.name {
		t.Fatalf("connected as %q (%v), want %q", user, err, r.name)
	}
	return pool
}

// grant calls pgflow.grant_worker or pgflow.grant_client (fn, with any
// further arguments) for a role and returns the statements it ran.
func callGrant(t *testing.T, ctx context.Context, owner *pgxpool.Pool, fn string, args ...any) []string {
	t.Helper()
	placeholders := make([]string, len(args))
	for i := range args {
		placeholders[i] = fmt.Sprintf("$%d", i+1)
	}
	rows, err := owner.Query(ctx, "SELECT * FROM pgflow."+fn+"("+strings.Join(placeholders, ", ")+")", args...)
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", fn, err)
	}
	return stmts
}

// sdkQuery reads a statement the Go runtime runs, as it runs it.
func sdkQuery(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "sdk", "queries", name+".sql"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sqlState is the SQLSTATE of a Postgres error, "" for nil, and "?" plus
// the error for anything else.
func sqlStateOf(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &pgErr):
		return pgErr.Code
	}
	return "? " + err.Error()
}

// TestPrivilegeCatalog checks the rules of 0002_privileges.sql on the
// catalog, so that a later migration cannot quietly break them.
func TestPrivilegeCatalog(t *testing.T) {
	t.Parallel()
	t.Run("new database", func(t *testing.T) {
		t.Parallel()
		checkPrivilegeCatalog(t, newEngine(t))
	})
	t.Run("upgraded from version 2", func(t *testing.T) {
		t.Parallel()
		pool := emptyPool(t)
		if _, err := schema.MigrateTo(t.Context(), pool, 2); err != nil {
			t.Fatal(err)
		}
		if _, err := schema.Migrate(t.Context(), pool); err != nil {
			t.Fatal(err)
		}
		checkPrivilegeCatalog(t, &engine{t: t, ctx: t.Context(), pool: pool})
	})
}

// checkPrivilegeCatalog checks the rules of 0002_privileges.sql in the
// catalog of e's database.
func checkPrivilegeCatalog(t *testing.T, e *engine) {
	type fn struct {
		Name     string
		Definer  bool
		Config   []string
		ByPublic bool
	}
	rows, err := e.pool.Query(e.ctx, `
		SELECT p.proname, p.prosecdef, coalesce(p.proconfig, '{}'), has_function_privilege('public', p.oid, 'EXECUTE')
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'pgflow' ORDER BY p.proname`)
	if err != nil {
		t.Fatal(err)
	}
	fns, err := pgx.CollectRows(rows, pgx.RowToStructByPos[fn])
	if err != nil {
		t.Fatal(err)
	}
	var definers []string
	for _, f := range fns {
		if f.ByPublic {
			t.Errorf("PUBLIC may execute pgflow.%s", f.Name)
		}
		if f.Definer {
			definers = append(definers, f.Name)
			if !slices.Contains(f.Config, "search_path=pg_catalog, pg_temp") {
				t.Errorf("pgflow.%s is SECURITY DEFINER with settings %q: its search_path is not pinned", f.Name, f.Config)
			}
		}
		if strings.HasPrefix(f.Name, "grant_") && !slices.Contains(f.Config, "search_path=pg_catalog, pg_temp") {
			t.Errorf("pgflow.%s has settings %q: its search_path is not pinned", f.Name, f.Config)
		}
		if slices.Contains(genericPlanFunctions, f.Name) &&
			(!slices.Contains(f.Config, "plan_cache_mode=force_generic_plan") || !slices.Contains(f.Config, "enable_seqscan=off")) {
			t.Errorf("pgflow.%s lost its plan settings: settings %q", f.Name, f.Config)
		}
	}
	if diff := cmp.Diff(definerFunctions, definers); diff != "" {
		t.Errorf("SECURITY DEFINER functions (-want +got):\n%s", diff)
	}

	var leaks []string
	rows, err = e.pool.Query(e.ctx, `
		SELECT 'schema pgflow' WHERE has_schema_privilege('public', 'pgflow', 'USAGE, CREATE')
		UNION ALL
		SELECT c.relkind::text || ' ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'pgflow' AND c.relkind IN ('r', 'v', 'm', 'S', 'p', 'f')
		  AND has_table_privilege('public', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')`)
	if err != nil {
		t.Fatal(err)
	}
	if leaks, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(leaks) > 0 {
		t.Errorf("PUBLIC holds privileges on: %q", leaks)
	}

	// One owner for everything: the role that ran the migrations.
	var owners []string
	rows, err = e.pool.Query(e.ctx, `
		SELECT DISTINCT o::regrole::text FROM (
		  SELECT nspowner FROM pg_namespace WHERE nspname = 'pgflow'
		  UNION ALL SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgflow'
		  UNION ALL SELECT p.proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgflow'
		) x(o)`)
	if err != nil {
		t.Fatal(err)
	}
	if owners, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(owners) != 1 {
		t.Errorf("owners of the pgflow schema's objects: %q (%v), want one", owners, err)
	}
}

// TestRolePrivileges runs a matrix of statements as a worker role, a client
// role and a role with no grant at all (what PUBLIC may do).
func TestRolePrivileges(t *testing.T) {
	t.Parallel()
	worker, client, nobody := newLoginRole(t, "pgflow_worker"), newLoginRole(t, "pgflow_client"), newLoginRole(t, "pgflow_nobody")
	e := newEngine(t)
	dbURL := e.pool.Config().ConnString()
	callGrant(t, e.ctx, e.pool, "grant_worker", worker.name)
	callGrant(t, e.ctx, e.pool, "grant_client", client.name)

	e.flow("probe", "", step{slug: "first"})
	e.exec("SELECT pgflow.create_flow('probe_add')")
	run := e.start("probe", `{"secret": 1}`)
	e.exec("CREATE TABLE public.app_secret (x int)")
	admin := scalar[string](e, "SELECT current_user")

	pools := map[string]*pgxpool.Pool{
		"worker": poolAs(t, e.ctx, dbURL, worker),
		"client": poolAs(t, e.ctx, dbURL, client),
		"nobody": poolAs(t, e.ctx, dbURL, nobody),
	}
	const workerID = "00000000-0000-0000-0000-0000000000aa"
	bogus := []any{[]string{"00000000-0000-0000-0000-000000000000"}, []string{"first"}, []int32{0}, []int32{1}}

	probes := []struct {
		name                   string
		sql                    string
		args                   []any
		worker, client, nobody string
	}{
		// What the Go runtime runs (sdk/queries), and LISTEN.
		{"shape lock", sdkQuery(t, "shape_lock"), nil, stmtAllowed, stmtAllowed, stmtAllowed},
		{"read shapes", sdkQuery(t, "shapes"), []any{[]string{"probe"}}, stmtAllowed, stmtAllowed, stmtDenied},
		{"create_flow", sdkQuery(t, "create_flow"), []any{"probe_new", 3, time.Second, time.Minute}, stmtAllowed, stmtDenied, stmtDenied},
		{"add_step", sdkQuery(t, "add_step"), []any{"probe_add", "x", []string{}, "single", nil, nil, nil, nil}, stmtAllowed, stmtDenied, stmtDenied},
		{"update_flow_options", sdkQuery(t, "update_flow_options"), []any{"probe", 3, time.Second, 5 * time.Minute}, stmtAllowed, stmtDenied, stmtDenied},
		{"update_step_options", sdkQuery(t, "update_step_options"), []any{"probe", "first", nil, nil, nil, nil}, stmtAllowed, stmtDenied, stmtDenied},
		{"start runs", sdkQuery(t, "start_runs"), []any{"probe", []string{`{}`}, nil}, stmtDenied, stmtAllowed, stmtDenied},
		{"start_flow", "SELECT pgflow.start_flow('probe', '{}')", nil, stmtDenied, stmtAllowed, stmtDenied},
		{"get_run", sdkQuery(t, "get_run"), []any{run}, stmtDenied, stmtAllowed, stmtDenied},
		{"run result", sdkQuery(t, "run_result"), []any{run}, stmtDenied, stmtAllowed, stmtDenied},
		{"ended runs", sdkQuery(t, "ended_runs"), []any{[]string{run}}, stmtAllowed, stmtAllowed, stmtDenied},
		{"cancel_run", sdkQuery(t, "cancel_run"), []any{run}, stmtDenied, stmtDenied, stmtDenied},
		{"claim", sdkQuery(t, "claim"), []any{workerID, []string{"probe"}, []string{"first"}, 1, []bool{true}, time.Second, int64(1)}, stmtAllowed, stmtDenied, stmtDenied},
		{"complete", sdkQuery(t, "complete"), append(slices.Clone(bogus), []string{"1"}), stmtAllowed, stmtDenied, stmtDenied},
		{"complete and claim", sdkQuery(t, "complete_claim"), append(slices.Clone(bogus), []string{"1"},
			workerID, []string{"probe"}, []string{"first"}, 1, []bool{true}, time.Second, int64(1)), stmtAllowed, stmtDenied, stmtDenied},
		{"fail", sdkQuery(t, "fail"), append(slices.Clone(bogus), []string{"boom"}, []bool{false}), stmtAllowed, stmtDenied, stmtDenied},
		{"release", sdkQuery(t, "release"), bogus, stmtAllowed, stmtDenied, stmtDenied},
		{"complete_task", "SELECT pgflow.complete_task($1::uuid, 'first', 0, 1, '1')", []any{run}, stmtAllowed, stmtDenied, stmtDenied},
		{"fail_task", "SELECT pgflow.fail_task($1::uuid, 'first', 0, 1, 'boom')", []any{run}, stmtAllowed, stmtDenied, stmtDenied},
		{"next visible", sdkQuery(t, "next_visible"), []any{[]string{"probe"}, []string{"first"}}, stmtAllowed, stmtDenied, stmtDenied},
		{"heartbeat", sdkQuery(t, "heartbeat"), []any{workerID, []string{"probe"}, "host"}, stmtAllowed, stmtDenied, stmtDenied},
		{"stopped", sdkQuery(t, "stopped"), []any{workerID}, stmtAllowed, stmtDenied, stmtDenied},
		{"schema version", "SELECT coalesce(max(version), 0) FROM pgflow.schema_migrations", nil, stmtAllowed, stmtDenied, stmtDenied},
		{"is_valid_slug", "SELECT pgflow.is_valid_slug('ok')", nil, stmtAllowed, stmtAllowed, stmtDenied},
		{"listen", "LISTEN pgflow_runs", nil, stmtAllowed, stmtAllowed, stmtAllowed},

		// Reading state directly.
		{"read run inputs", "SELECT input FROM pgflow.runs", nil, stmtDenied, stmtAllowed, stmtDenied},
		{"read tasks", "SELECT * FROM pgflow.step_tasks", nil, stmtDenied, stmtDenied, stmtDenied},
		{"read step states", "SELECT * FROM pgflow.step_states", nil, stmtDenied, stmtDenied, stmtDenied},
		{"read workers", "SELECT * FROM pgflow.workers", nil, stmtDenied, stmtDenied, stmtDenied},
		{"read step options", "SELECT * FROM pgflow.step_options", nil, stmtDenied, stmtDenied, stmtDenied},
		{"read another table", "SELECT * FROM public.app_secret", nil, stmtDenied, stmtDenied, stmtDenied},

		// Writing tables directly.
		{"insert flow", "INSERT INTO pgflow.flows (flow_slug, opt_max_attempts, opt_base_delay, opt_timeout) VALUES ('sneaky', 1, '1s', '1m')", nil, stmtDenied, stmtDenied, stmtDenied},
		{"insert step", "INSERT INTO pgflow.steps (flow_slug, step_slug, step_type, step_index, deps_count) VALUES ('probe', 'sneaky', 'single', 9, 0)", nil, stmtDenied, stmtDenied, stmtDenied},
		{"delete deps", "DELETE FROM pgflow.deps", nil, stmtDenied, stmtDenied, stmtDenied},
		{"update runs", "UPDATE pgflow.runs SET status = 'completed'", nil, stmtDenied, stmtDenied, stmtDenied},
		{"delete runs", "DELETE FROM pgflow.runs", nil, stmtDenied, stmtDenied, stmtDenied},
		{"update tasks", "UPDATE pgflow.step_tasks SET visible_at = now()", nil, stmtDenied, stmtDenied, stmtDenied},
		{"truncate step states", "TRUNCATE pgflow.step_states", nil, stmtDenied, stmtDenied, stmtDenied},
		{"insert worker", "INSERT INTO pgflow.workers (worker_id) VALUES (gen_random_uuid())", nil, stmtDenied, stmtDenied, stmtDenied},
		{"delete migrations", "DELETE FROM pgflow.schema_migrations", nil, stmtDenied, stmtDenied, stmtDenied},

		// Internals and grants.
		{"_end_run", "SELECT pgflow._end_run($1::uuid, 'cancelled', NULL, NULL, NULL)", []any{run}, stmtDenied, stmtDenied, stmtDenied},
		{"_advance", "SELECT pgflow._advance(NULL, NULL, NULL, NULL)", nil, stmtDenied, stmtDenied, stmtDenied},
		{"_new_run_id", "SELECT pgflow._new_run_id()", nil, stmtDenied, stmtDenied, stmtDenied},
		{"grant_client", "SELECT pgflow.grant_client(current_user, allow_cancel => true)", nil, stmtDenied, stmtDenied, stmtDenied},
		{"grant_worker", "SELECT pgflow.grant_worker(current_user)", nil, stmtDenied, stmtDenied, stmtDenied},
		{"grant table", "GRANT SELECT ON pgflow.step_tasks TO PUBLIC", nil, stmtDenied, stmtDenied, stmtDenied},
		{"become the owner", "SET ROLE " + pgx.Identifier{admin}.Sanitize(), nil, stmtDenied, stmtDenied, stmtDenied},

		// Changing the schema.
		{"drop table", "DROP TABLE pgflow.step_tasks", nil, stmtDenied, stmtDenied, stmtDenied},
		{"alter table", "ALTER TABLE pgflow.runs ADD COLUMN note text", nil, stmtDenied, stmtDenied, stmtDenied},
		{"create index", "CREATE INDEX ON pgflow.runs (status)", nil, stmtDenied, stmtDenied, stmtDenied},
		{"create table", "CREATE TABLE pgflow.mine (x int)", nil, stmtDenied, stmtDenied, stmtDenied},
		{"shadow a function", "CREATE FUNCTION pgflow.start_flow(text) RETURNS uuid LANGUAGE sql RETURN NULL", nil, stmtDenied, stmtDenied, stmtDenied},
		{"alter function", "ALTER FUNCTION pgflow.get_run(uuid) SECURITY INVOKER", nil, stmtDenied, stmtDenied, stmtDenied},
		{"replace function", "CREATE OR REPLACE FUNCTION pgflow.is_valid_slug(slug text) RETURNS boolean LANGUAGE sql RETURN true", nil, stmtDenied, stmtDenied, stmtDenied},
		{"drop schema", "DROP SCHEMA pgflow CASCADE", nil, stmtDenied, stmtDenied, stmtDenied},
		{"comment", "COMMENT ON TABLE pgflow.runs IS 'mine'", nil, stmtDenied, stmtDenied, stmtDenied},
	}
	for _, p := range probes {
		for _, r := range []struct{ name, want string }{{"worker", p.worker}, {"client", p.client}, {"nobody", p.nobody}} {
			_, err := pools[r.name].Exec(e.ctx, p.sql, p.args...)
			if got := sqlStateOf(err); got != r.want {
				t.Errorf("%s as %s: got SQLSTATE %q (%v), want %q", p.name, r.name, got, err, r.want)
			}
		}
	}

	// They own nothing.
	for _, r := range []loginRole{worker, client, nobody} {
		n := scalar[int](e, `
			SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
			     + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
			     + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
			     + (SELECT count(*) FROM pg_type WHERE typowner = r.oid)
			FROM pg_roles r WHERE r.rolname = $1`, r.name)
		if n != 0 {
			t.Errorf("role %s owns %d objects", r.name, n)
		}
	}
	// Nothing of the above changed what PUBLIC may do, nor the definitions.
	if got := scalar[bool](e, "SELECT has_table_privilege('public', 'pgflow.step_tasks', 'SELECT')"); got {
		t.Error("PUBLIC may read pgflow.step_tasks")
	}
	if got := scalar[int](e, "SELECT count(*)::int FROM pgflow.steps WHERE step_slug = 'sneaky'"); got != 0 {
		t.Error("a step was inserted directly")
	}
}

// TestWorkerAndClientRolesRunAFlow drives a flow with the runtime's own
// statements: the worker defines it and works its tasks (claim, complete,
// fail, retry, release), the client starts runs and reads them.
func TestWorkerAndClientRolesRunAFlow(t *testing.T) {
	t.Parallel()
	workerRole, clientRole := newLoginRole(t, "pgflow_worker"), newLoginRole(t, "pgflow_client")
	e := newEngine(t)
	dbURL := e.pool.Config().ConnString()
	callGrant(t, e.ctx, e.pool, "grant_worker", workerRole.name)
	callGrant(t, e.ctx, e.pool, "grant_client", clientRole.name)
	worker, client := poolAs(t, e.ctx, dbURL, workerRole), poolAs(t, e.ctx, dbURL, clientRole)
	ctx := e.ctx
	const workerID = "00000000-0000-0000-0000-0000000000bb"

	countShapeRows := func(q pgx.Tx) int {
		t.Helper()
		rows, err := q.Query(ctx, sdkQuery(t, "shapes"), []string{"roles"})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("read shapes: %v", err)
		}
		return n
	}
	// The worker syncs the flow the way EnsureFlows does.
	err := pgx.BeginFunc(ctx, worker, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sdkQuery(t, "shape_lock")); err != nil {
			return err
		}
		if n := countShapeRows(tx); n != 0 {
			return fmt.Errorf("%d shape rows before the sync", n)
		}
		if _, err := tx.Exec(ctx, sdkQuery(t, "create_flow"), "roles", 2, time.Duration(0), time.Minute); err != nil {
			return err
		}
		for _, s := range []struct{ slug, dep string }{{"one", ""}, {"two", "one"}} {
			deps := []string{}
			if s.dep != "" {
				deps = append(deps, s.dep)
			}
			if _, err := tx.Exec(ctx, sdkQuery(t, "add_step"), "roles", s.slug, deps, "single", nil, nil, nil, nil); err != nil {
				return err
			}
		}
		if n := countShapeRows(tx); n != 2 {
			return fmt.Errorf("%d shape rows after the sync, want 2", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("worker syncs the flow: %v", err)
	}

	var runs []string
	if err := client.QueryRow(ctx, sdkQuery(t, "start_runs"), "roles", []string{`{"n": 1}`, `{"n": 2}`}, nil).Scan(&runs); err != nil {
		t.Fatalf("client starts runs: %v", err)
	}
	if _, err := worker.Exec(ctx, sdkQuery(t, "heartbeat"), workerID, []string{"roles"}, "host"); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}

	claim := func(step string, want int) []task {
		t.Helper()
		rows, err := worker.Query(ctx, sdkQuery(t, "claim"), workerID, []string{"roles"}, []string{step}, 10, []bool{true}, time.Second, int64(1))
		if err != nil {
			t.Fatalf("claim: %v", err)
		}
		tasks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (task, error) {
			var k task
			var input, deps, item []byte
			err := r.Scan(&k.RunID, &k.Step, &k.Index, &k.Attempt, &k.Timeout, &input, &deps, &item, &k.Flow)
			k.RunInput, k.Deps, k.Item = string(input), string(deps), string(item)
			return k, err
		})
		if err != nil {
			t.Fatalf("claim: %v", err)
		}
		if len(tasks) != want {
			t.Fatalf("claimed %d tasks of %s, want %d", len(tasks), step, want)
		}
		return tasks
	}
	report := func(query string, k task, extra ...any) int {
		t.Helper()
		args := append([]any{[]string{k.RunID}, []string{k.Step}, []int32{int32(k.Index)}, []int32{int32(k.Attempt)}}, extra...)
		var n int
		if err := worker.QueryRow(ctx, sdkQuery(t, query), args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return n
	}

	ones := claim("one", 2)
	slices.SortFunc(ones, func(a, b task) int { return strings.Compare(a.RunID, b.RunID) })
	first, second := ones[0], ones[1]
	if first.RunID != min(runs[0], runs[1]) || first.RunInput == "" {
		t.Fatalf("claimed %+v", first)
	}
	if n := report("complete", first, []string{`{"done": 1}`}); n != 1 {
		t.Fatalf("complete applied %d", n)
	}
	if n := report("fail", second, []string{"boom"}, []bool{false}); n != 1 {
		t.Fatalf("fail applied %d", n)
	}
	var next *time.Time
	if err := worker.QueryRow(ctx, sdkQuery(t, "next_visible"), []string{"roles"}, []string{"one"}).Scan(&next); err != nil || next == nil {
		t.Fatalf("next visible: %v, %v", next, err)
	}
	retried := claim("one", 1)[0]
	if retried.RunID != second.RunID || retried.Attempt != 2 {
		t.Fatalf("retried %+v", retried)
	}
	if n := report("release", retried); n != 1 {
		t.Fatalf("release applied %d", n)
	}
	again := claim("one", 1)[0]
	if n := report("complete", again, []string{`{"done": 2}`}); n != 1 {
		t.Fatalf("complete applied %d", n)
	}

	twos := claim("two", 2)
	for _, k := range twos {
		if k.Deps == "" {
			t.Errorf("task %+v came without its dependency's output", k)
		}
		if k.RunID == first.RunID {
			if n := report("complete", k, []string{`"ok"`}); n != 1 {
				t.Fatalf("complete applied %d", n)
			}
		}
	}

	rows, err := worker.Query(ctx, sdkQuery(t, "ended_runs"), runs)
	if err != nil {
		t.Fatal(err)
	}
	ended, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || !slices.Equal(ended, []string{first.RunID}) {
		t.Fatalf("ended runs %q (%v), want %q", ended, err, first.RunID)
	}
	if _, err := worker.Exec(ctx, sdkQuery(t, "stopped"), workerID); err != nil {
		t.Fatalf("stopped: %v", err)
	}

	var status, output string
	var errStep, errMsg string
	var errIndex int
	if err := client.QueryRow(ctx, sdkQuery(t, "run_result"), first.RunID).Scan(new(string), &status, &output, &errStep, &errIndex, &errMsg); err != nil {
		t.Fatalf("run result: %v", err)
	}
	if status != "completed" || output != `{"two": "ok"}` {
		t.Errorf("run result: %s %s", status, output)
	}
	var info []byte
	if err := client.QueryRow(ctx, sdkQuery(t, "get_run"), second.RunID).Scan(&info); err != nil {
		t.Fatalf("get_run: %v", err)
	}
	var state runState
	mustUnmarshal(t, string(info), &state)
	if state.RunID != second.RunID || state.Status != "started" {
		t.Errorf("get_run: %s", info)
	}
	if ok := scalar[bool](e, "SELECT stopped_at IS NOT NULL AND hostname = 'host' FROM pgflow.workers WHERE worker_id = $1", workerID); !ok {
		t.Error("the worker's heartbeat or stop is not recorded")
	}
}

// TestClientRoleMayCancel: grant_client with allow_cancel adds cancel_run.
func TestClientRoleMayCancel(t *testing.T) {
	t.Parallel()
	canceller := newLoginRole(t, "pgflow_canceller")
	e := newEngine(t)
	stmts := callGrant(t, e.ctx, e.pool, "grant_client", canceller.name, true)
	if !slices.ContainsFunc(stmts, func(s string) bool { return strings.Contains(s, "cancel_run") }) {
		t.Errorf("grant_client(allow_cancel) ran %q", stmts)
	}
	e.flow("cancellable", "", step{slug: "only"})
	run := e.start("cancellable", "{}")
	pool := poolAs(t, e.ctx, e.pool.Config().ConnString(), canceller)
	var cancelled bool
	if err := pool.QueryRow(e.ctx, sdkQuery(t, "cancel_run"), run).Scan(&cancelled); err != nil || !cancelled {
		t.Fatalf("cancel: %v, %v", cancelled, err)
	}
	if got := e.run(run).Status; got != "cancelled" {
		t.Errorf("run status %s", got)
	}
}

// TestGrantFunctions: the grant functions quote the role, refuse what is
// not a role, and may run again.
func TestGrantFunctions(t *testing.T) {
	t.Parallel()
	odd := newRoleNamed(t, `pgflow "Odd" worker; `+randomHex(4))
	e := newEngine(t)
	first := callGrant(t, e.ctx, e.pool, "grant_worker", odd.name)
	quoted := pgx.Identifier{odd.name}.Sanitize()
	for _, s := range first {
		if !strings.HasSuffix(s, " TO "+quoted) {
			t.Errorf("statement %q does not end with TO %s", s, quoted)
		}
	}
	if again := callGrant(t, e.ctx, e.pool, "grant_worker", odd.name); !slices.Equal(again, first) {
		t.Errorf("second run: %q, first: %q", again, first)
	}
	callGrant(t, e.ctx, e.pool, "grant_client", odd.name)
	pool := poolAs(t, e.ctx, e.pool.Config().ConnString(), odd)
	if _, err := pool.Exec(e.ctx, sdkQuery(t, "heartbeat"), "00000000-0000-0000-0000-0000000000cc", []string{}, nil); err != nil {
		t.Errorf("heartbeat as %s: %v", odd.name, err)
	}

	for _, bad := range []any{"public", "PUBLIC", "no_such_role_" + randomHex(4), nil} {
		for _, fn := range []string{"grant_worker", "grant_client"} {
			_, err := e.pool.Exec(e.ctx, "SELECT pgflow."+fn+"($1)", bad)
			if got := sqlStateOf(err); got != "PF005" {
				t.Errorf("%s(%v): got %q (%v), want PF005", fn, bad, got, err)
			}
		}
	}
	if got := scalar[bool](e, "SELECT has_schema_privilege('public', 'pgflow', 'USAGE')"); got {
		t.Error("PUBLIC got USAGE on the schema")
	}
}

// TestPrivilegeDocsMatch: the GRANT statements docs/privileges.md lists
// are the ones the grant functions run.
func TestPrivilegeDocsMatch(t *testing.T) {
	t.Parallel()
	worker, client := newLoginRole(t, "pgflow_doc_worker"), newLoginRole(t, "pgflow_doc_client")
	e := newEngine(t)
	var got []string
	for _, s := range callGrant(t, e.ctx, e.pool, "grant_worker", worker.name) {
		got = append(got, strings.ReplaceAll(s, worker.name, "app_worker"))
	}
	for _, s := range callGrant(t, e.ctx, e.pool, "grant_client", client.name, true) {
		got = append(got, strings.ReplaceAll(s, client.name, "app_client"))
	}

	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "privileges.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, snippet, ok := strings.Cut(string(doc), "```sql\n-- pgflow.grant_worker('app_worker')\n")
	if snippet, _, ok = strings.Cut(snippet, "```"); !ok {
		t.Fatal("docs/privileges.md lists no GRANT statements")
	}
	var want []string
	for _, line := range strings.Split(snippet, "\n") {
		if strings.HasPrefix(line, "--") {
			continue
		}
		want = append(want, line)
	}
	var stmts []string
	for _, s := range strings.Split(strings.Join(want, " "), ";") {
		if s = strings.Join(strings.Fields(s), " "); s != "" {
			stmts = append(stmts, s)
		}
	}
	if diff := cmp.Diff(stmts, got); diff != "" {
		t.Errorf("docs/privileges.md (-) and the grant functions (+) differ:\n%s", diff)
	}
}

// TestSDKAsLeastPrivilegedRoles runs the real Go runtime as the two roles,
// on a schema installed by an owner who is not a superuser: whatever the
// worker and the client do, the grants cover it.
func TestSDKAsLeastPrivilegedRoles(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ownerRole := newLoginRole(t, "pgflow_owner")
	workerRole, clientRole := newLoginRole(t, "pgflow_worker"), newLoginRole(t, "pgflow_client")
	dbURL := testdb.NewDatabaseFrom(t, "")
	admin, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	var dbName string
	if err := admin.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "GRANT CREATE ON DATABASE "+pgx.Identifier{dbName}.Sanitize()+" TO "+pgx.Identifier{ownerRole.name}.Sanitize()); err != nil {
		t.Fatal(err)
	}

	// The owner installs the schema and sets up the roles.
	owner := poolAs(t, ctx, dbURL, ownerRole)
	if v, err := schema.Migrate(ctx, owner); err != nil || v != schema.LatestVersion() {
		t.Fatalf("migrate as the owner: %d, %v", v, err)
	}
	callGrant(t, ctx, owner, "grant_worker", workerRole.name)
	callGrant(t, ctx, owner, "grant_client", clientRole.name)

	workerPool, clientPool := poolAs(t, ctx, dbURL, workerRole), poolAs(t, ctx, dbURL, clientRole)
	var logs testdb.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker and client logs:\n%s", logs.String())
		}
	})
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	client := sdk.NewClient(clientPool, sdk.WithClientLogger(logger))
	t.Cleanup(client.Close)

	type input struct {
		N int `json:"n"`
	}
	type output struct {
		Sum int `json:"sum"`
	}
	squares := sdk.NewFlow[input, output](sdk.FlowSpec{Slug: "priv_squares", BaseDelay: time.Millisecond, Steps: []sdk.StepSpec{
		{Slug: "split"},
		{Slug: "square", Deps: []string{"split"}, Fanout: true},
		{Slug: "sum", Deps: []string{"square"}},
	}})
	hold := sdk.NewFlow[struct{}, struct{}](sdk.FlowSpec{Slug: "priv_hold", Steps: []sdk.StepSpec{{Slug: "hold"}}})

	// The client may not create flows: starting one nobody created says it
	// does not exist (the client skips the sync it may not do).
	_, err = squares.Start(ctx, client, input{N: 4})
	if !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("client starts a flow nobody created: %v, want ErrNotFound", err)
	}

	w := sdk.NewWorker(workerPool, sdk.WorkerOptions{
		Concurrency: 4, Logger: logger, HeartbeatInterval: 20 * time.Millisecond, ShutdownTimeout: 200 * time.Millisecond,
	})
	var failedOnce sync.Once
	sdk.HandleStep(w, squares, "split", func(_ context.Context, in input, _ struct{}) ([]int, error) {
		out := make([]int, in.N)
		for i := range out {
			out[i] = i + 1
		}
		return out, nil
	})
	sdk.HandleFanout(w, squares, "square", func(_ context.Context, x int) (int, error) {
		var err error
		if x == 2 {
			failedOnce.Do(func() { err = errors.New("first attempt fails") })
		}
		return x * x, err
	})
	sdk.HandleStep(w, squares, "sum", func(_ context.Context, _ input, deps struct {
		Square []int `json:"square"`
	}) (int, error) {
		sum := 0
		for _, v := range deps.Square {
			sum += v
		}
		return sum, nil
	})
	entered := make(chan struct{}, 1)
	sdk.HandleStep(w, hold, "hold", func(ctx context.Context, _ struct{}, _ struct{}) (int, error) {
		entered <- struct{}{}
		<-ctx.Done()
		return 0, ctx.Err()
	})

	// The worker syncs the flows (Run does it again; then nothing changes).
	if err := sdk.EnsureFlows(ctx, workerPool, squares.Spec(), hold.Spec()); err != nil {
		t.Fatalf("worker syncs the flows: %v", err)
	}
	workerCtx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	done := make(chan error, 1)
	go func() { done <- w.Run(workerCtx) }()

	run, err := squares.Start(ctx, client, input{N: 4})
	if err != nil {
		t.Fatalf("client starts a run: %v", err)
	}
	out, err := run.Wait(ctx)
	if err != nil || out.Sum != 30 {
		t.Fatalf("wait: %+v, %v", out, err)
	}
	info, err := client.GetRun(ctx, run.ID())
	if err != nil || info.Status != sdk.RunCompleted {
		t.Fatalf("get run: %+v, %v", info, err)
	}
	if _, err := client.CancelRun(ctx, run.ID()); sqlStateOf(err) != stmtDenied {
		t.Errorf("client cancels a run: %v, want permission denied", err)
	}
	var retried int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pgflow.step_tasks WHERE run_id = $1 AND attempt > 1", [16]byte(run.ID())).Scan(&retried); err != nil || retried != 1 {
		t.Errorf("%d retried tasks (%v), want 1", retried, err)
	}

	// A graceful shutdown hands a running task back and records the stop.
	held, err := hold.Start(ctx, client, struct{}{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the hold handler never ran")
	}
	stopWorker()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("worker: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the worker did not stop")
	}
	var status string
	var released bool
	if err := admin.QueryRow(ctx, "SELECT status, worker_id IS NULL AND failures = 0 FROM pgflow.step_tasks WHERE run_id = $1",
		[16]byte(held.ID())).Scan(&status, &released); err != nil || status != "queued" || !released {
		t.Errorf("held task: %s, released %v (%v), want queued and released", status, released, err)
	}
	var stopped bool
	if err := admin.QueryRow(ctx, "SELECT stopped_at IS NOT NULL FROM pgflow.workers WHERE worker_id = $1",
		[16]byte(w.ID())).Scan(&stopped); err != nil || !stopped {
		t.Errorf("worker row stopped %v (%v)", stopped, err)
	}
	if strings.Contains(logs.String(), "permission denied") {
		t.Errorf("the runtime hit a missing privilege:\n%s", logs.String())
	}
}
