package schema_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestDefinitionErrors(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("defs", "", step{slug: "a"}, step{slug: "b", deps: []string{"a"}})
	e.flow("used", "", step{slug: "a"})
	e.start("used", `{}`)

	tests := []struct {
		name string
		sql  string
		code string
		want string
	}{
		{"bad flow slug", `SELECT pgflow.create_flow('Bad-Slug')`, "PF003", `invalid flow slug "Bad-Slug"`},
		{"slug with quote", `SELECT pgflow.create_flow('a''b')`, "PF003", `invalid flow slug "a'b"`},
		{"slug too long", `SELECT pgflow.create_flow(repeat('a', 64))`, "PF003", "invalid flow slug"},
		{"sql fragment", `SELECT pgflow.add_step('defs', 'x; drop table pgflow.runs')`, "PF003", "invalid step slug"},
		{"null slug", `SELECT pgflow.create_flow(NULL)`, "PF003", "invalid flow slug NULL"},
		{"zero attempts", `SELECT pgflow.create_flow('z', max_attempts => 0)`, "PF003", "max_attempts must be >= 1"},
		{"zero timeout", `SELECT pgflow.create_flow('z', timeout => '0')`, "PF003", "timeout must be positive"},
		{"negative start delay", `SELECT pgflow.add_step('defs', 'c', start_delay => '-1 second')`, "PF003", "start_delay must not be negative"},
		{"flow exists with other options", `SELECT pgflow.create_flow('defs', max_attempts => 9)`, "PF003", "already exists with other options"},
		{"unknown flow", `SELECT pgflow.add_step('nope', 'a')`, "PF001", `flow "nope" does not exist`},
		{"unknown dependency", `SELECT pgflow.add_step('defs', 'c', deps => '{zzz}')`, "PF003", `unknown dependency "zzz"`},
		{"self dependency", `SELECT pgflow.add_step('defs', 'c', deps => '{c}')`, "PF003", "cannot depend on itself"},
		{"duplicate dependency", `SELECT pgflow.add_step('defs', 'c', deps => '{a,a}')`, "PF003", "list a step twice"},
		{"fanout with two deps", `SELECT pgflow.add_step('defs', 'c', deps => '{a,b}', step_type => 'fanout')`, "PF003", "fanout steps must have exactly one dependency"},
		{"bad step type", `SELECT pgflow.add_step('defs', 'c', step_type => 'map')`, "PF003", "step_type must be 'single' or 'fanout'"},
		{"step redefined", `SELECT pgflow.add_step('defs', 'b', deps => '{}')`, "PF003", "already exists with another definition"},
		{"flow with runs", `SELECT pgflow.add_step('used', 'b')`, "PF003", "already has runs"},
		{"start unknown flow", `SELECT pgflow.start_flow('nope', '{}')`, "PF001", `flow "nope" does not exist`},
		{"start flow without steps", `SELECT pgflow.create_flow('hollow'); SELECT pgflow.start_flow('hollow', '{}')`, "PF003", "has no steps"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.pool.Exec(e.ctx, tc.sql)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("got %v, want a Postgres error", err)
			}
			if pgErr.Code != tc.code || !strings.Contains(pgErr.Message, tc.want) {
				t.Fatalf("got %s %q, want %s containing %q", pgErr.Code, pgErr.Message, tc.code, tc.want)
			}
		})
	}

	// Repeating a definition is a no-op.
	e.exec(`SELECT pgflow.create_flow('defs')`)
	e.exec(`SELECT pgflow.add_step('defs', 'b', deps => '{a}')`)
	if n := scalar[int](e, "SELECT count(*)::int FROM pgflow.steps WHERE flow_slug = 'defs'"); n != 2 {
		t.Fatalf("%d steps after repeating the definition", n)
	}
}
