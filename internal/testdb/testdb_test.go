package testdb

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) {
	os.Exit(Main(m, WithTemplate(func(ctx context.Context, connString string) error {
		conn, err := pgx.Connect(ctx, connString)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, `CREATE TABLE marker (note text); INSERT INTO marker VALUES ('from the template')`)
		return err
	})))
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func queryString(t *testing.T, connString, sql string, args ...any) string {
	t.Helper()
	ctx := ctxFor(t)
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	return queryString(t, AdminURL(), "SELECT count(*)::text FROM pg_database WHERE datname = $1", name) == "1"
}

func TestDistinctDatabases(t *testing.T) {
	t.Parallel()
	a, b := NewDatabase(t), NewDatabase(t)
	if a == b {
		t.Fatalf("same connection string twice: %s", a)
	}
	nameA := queryString(t, a, "SELECT current_database()")
	nameB := queryString(t, b, "SELECT current_database()")
	if nameA == nameB || !strings.HasPrefix(nameA, fmt.Sprintf("pgflow_test_%d_", os.Getpid())) {
		t.Fatalf("database names %q and %q", nameA, nameB)
	}
	if !databaseExists(t, nameA) || !databaseExists(t, nameB) {
		t.Fatal("databases not found in pg_database")
	}
}

func TestDroppedAfterTest(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("sub", func(t *testing.T) {
		pool := NewPool(t)
		if err := pool.QueryRow(ctxFor(t), "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
		// An open connection must not prevent the drop.
		conn, err := pgx.Connect(ctxFor(t), NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn // left open on purpose
	})
	if name == "" || databaseExists(t, name) {
		t.Fatalf("database %q still exists after its test", name)
	}
}

func TestParallel(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		names = map[string]bool{}
	)
	t.Run("group", func(t *testing.T) {
		for i := range 8 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				pool := NewPool(t)
				ctx := ctxFor(t)
				if _, err := pool.Exec(ctx, "INSERT INTO marker VALUES ($1)", fmt.Sprint(i)); err != nil {
					t.Fatal(err)
				}
				var n int
				var db string
				if err := pool.QueryRow(ctx, "SELECT count(*), current_database() FROM marker").Scan(&n, &db); err != nil {
					t.Fatal(err)
				}
				if n != 2 { // the template's row and ours: nobody else writes here
					t.Errorf("marker has %d rows, want 2", n)
				}
				mu.Lock()
				defer mu.Unlock()
				if names[db] {
					t.Errorf("database %s handed out twice", db)
				}
				names[db] = true
			})
		}
	})
	if len(names) != 8 {
		t.Errorf("got %d databases, want 8", len(names))
	}
}

func TestTemplate(t *testing.T) {
	t.Parallel()
	tmpl := Template()
	if !strings.HasPrefix(tmpl, fmt.Sprintf("pgflow_template_%d_", os.Getpid())) {
		t.Fatalf("Template() = %q", tmpl)
	}
	if got := queryString(t, NewDatabase(t), "SELECT note FROM marker"); got != "from the template" {
		t.Errorf("clone of the template: marker = %q", got)
	}
	if got := queryString(t, NewDatabaseFrom(t, ""), "SELECT coalesce(to_regclass('marker')::text, 'absent')"); got != "absent" {
		t.Errorf("database without template has marker: %q", got)
	}
	if got := queryString(t, AdminURL(), "SELECT datistemplate::text || ',' || datallowconn::text FROM pg_database WHERE datname = $1", tmpl); got != "true,false" {
		t.Errorf("template flags = %q", got)
	}
}

func TestTemplateFromTest(t *testing.T) {
	t.Parallel()
	// A test can build its own template and clone it.
	src := NewDatabaseFrom(t, "")
	srcName := queryString(t, src, "SELECT current_database()")
	if err := execAdmin(ctxFor(t), src, "CREATE TABLE own (x int)"); err != nil {
		t.Fatal(err)
	}
	clone := NewDatabaseFrom(t, srcName)
	if got := queryString(t, clone, "SELECT coalesce(to_regclass('own')::text, 'absent')"); got != "own" {
		t.Errorf("clone lacks the table: %q", got)
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:p@h:5432/postgres?sslmode=disable": "postgres://u:p@h:5432/db_1?sslmode=disable",
		"postgresql://h/":                  "postgresql://h/db_1",
		"host=h port=5432 dbname=postgres": "host=h port=5432 dbname=postgres dbname='db_1'",
	} {
		got, err := withDatabase(in, "db_1")
		if err != nil || got != want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestExternalServer runs this test binary again with
// PGFLOW_TEST_DATABASE_URL pointing at our server and checks that it uses
// it instead of starting its own.
func TestExternalServer(t *testing.T) {
	if os.Getenv("TESTDB_CHILD") == "1" {
		t.Skip("already the child")
	}
	t.Parallel()
	before := queryString(t, AdminURL(), "SELECT count(*)::text FROM pg_database WHERE datname LIKE 'pgflow_template_%'")
	cmd := exec.CommandContext(ctxFor(t), os.Args[0], "-test.run=^TestChildUsesExternalServer$", "-test.v")
	cmd.Env = append(os.Environ(), EnvURL+"="+AdminURL(), "TESTDB_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestChildUsesExternalServer") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	after := queryString(t, AdminURL(), "SELECT count(*)::text FROM pg_database WHERE datname LIKE 'pgflow_template_%'")
	if before != after {
		t.Errorf("child left a template behind: %s -> %s templates", before, after)
	}
}

func TestChildUsesExternalServer(t *testing.T) {
	if os.Getenv("TESTDB_CHILD") != "1" {
		t.Skip("run by TestExternalServer")
	}
	if AdminURL() != os.Getenv(EnvURL) {
		t.Fatalf("AdminURL() = %q, want %q", AdminURL(), os.Getenv(EnvURL))
	}
	if got := queryString(t, NewDatabase(t), "SELECT note FROM marker"); got != "from the template" {
		t.Errorf("marker = %q", got)
	}
}
