package emit

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/ir"
	"github.com/pgflow-go/pgflow/internal/testdb"
	"github.com/pgflow-go/pgflow/sdk"
)

// storedFlows returns what the database stores about flow definitions.
func storedFlows(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	query, err := os.ReadFile(filepath.Join("testdata", "stored_flows.sql"))
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := pool.QueryRow(context.Background(), string(query)).Scan(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// sqlCases are packages of flows whose SQL is applied to a database.
func sqlCases() map[string]*ir.Package {
	step := func(slug string, opts ir.Options, fanout bool, deps ...*ir.Step) *ir.Step {
		return &ir.Step{Slug: slug, Options: opts, Fanout: fanout, Deps: deps}
	}
	root := step("root", ir.Options{}, true)
	a := step("a", ir.Options{MaxAttempts: 1, BaseDelay: 1500 * time.Millisecond}, false, root)
	b := step("b", ir.Options{Timeout: 90 * time.Minute, StartDelay: 250 * time.Microsecond}, false, root)
	join := step("join", ir.Options{BaseDelay: 2*time.Second + time.Microsecond, Timeout: 36 * time.Hour, StartDelay: 3 * time.Second}, false, b, a)
	many := &ir.Flow{
		Slug:    "options_everywhere",
		Options: ir.Options{MaxAttempts: 10, BaseDelay: 750 * time.Millisecond, Timeout: 48 * time.Hour},
		Steps:   []*ir.Step{root, a, b, join},
	}
	minimal := &ir.Flow{
		Slug:    "minimal",
		Options: ir.Options{MaxAttempts: 1, BaseDelay: time.Microsecond, Timeout: time.Microsecond},
		Steps:   []*ir.Step{step("only", ir.Options{}, false)},
	}
	return map[string]*ir.Package{
		"design":  design(),
		"options": {Path: "github.com/example/options", Flows: []*ir.Flow{many, minimal}},
	}
}

// TestSQLMatchesEnsureFlows applies the generated SQL to one database and
// lets sdk.EnsureFlows create the generated specs in another: both must
// store the same definitions, and EnsureFlows must then find nothing to
// change in the first. Applying the SQL twice is harmless.
func TestSQLMatchesEnsureFlows(t *testing.T) {
	t.Parallel()
	for name, pkg := range sqlCases() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			script, err := SQL(pkg)
			if err != nil {
				t.Fatal(err)
			}
			specs := Specs(pkg)

			applied := testdb.NewPool(t)
			for range 2 {
				if _, err := applied.Exec(ctx, string(script)); err != nil {
					t.Fatalf("applying the generated SQL: %v\n%s", err, script)
				}
			}
			ensured := testdb.NewPool(t)
			if err := sdk.EnsureFlows(ctx, ensured, specs...); err != nil {
				t.Fatalf("EnsureFlows: %v", err)
			}
			want := storedFlows(t, ensured)
			got := storedFlows(t, applied)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("the SQL stores other definitions than EnsureFlows (-EnsureFlows +SQL):\n%s\nSQL:\n%s", diff, script)
			}

			if err := sdk.EnsureFlows(ctx, applied, specs...); err != nil {
				t.Fatalf("EnsureFlows after the SQL: %v", err)
			}
			if after := storedFlows(t, applied); after != got {
				t.Errorf("EnsureFlows changed the flows the SQL created:\n%s\nbefore:\n%s", after, got)
			}
		})
	}
}
