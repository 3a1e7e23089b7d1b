// Package testdb gives the tests of every pgflow package their own
// PostgreSQL databases.
//
// A package's tests share one server: a throwaway one started by [Main]
// (with durability turned off for speed), or the server named by the
// PGFLOW_TEST_DATABASE_URL environment variable (a connection string with
// the right to create databases). Each test gets a fresh, uniquely named
// database from [NewDatabase] or [NewPool], dropped when the test ends, so
// tests can run in parallel, as can test binaries sharing one external
// server.
//
//	func TestMain(m *testing.M) {
//		// The schema is installed once per package.
//		os.Exit(testdb.Main(m, testdb.WithTemplate(testdb.Migrated)))
//	}
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		pool := testdb.NewPool(t) // a clone of the template
//		// ...
//	}
//
// With a template, the schema is applied once per test binary and each test
// database is a cheap copy of it (CREATE DATABASE ... TEMPLATE).
//
// Databases are named pgflow_test_<pid>_<n>_<random> and
// pgflow_template_<pid>_<n>_<random>. If a test binary is killed, those it
// made stay on an external server and can be dropped by name; a throwaway
// server is stopped and deleted by its watchdog.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

// EnvURL names the environment variable that, when set, makes the tests use
// that server instead of starting a throwaway one.
const EnvURL = "PGFLOW_TEST_DATABASE_URL"

// TemplateFunc prepares a template database (for example installs the
// schema) given its connection string. It must close its connections before
// returning; any left open are terminated.
type TemplateFunc func(ctx context.Context, connString string) error

// Option configures [Main].
type Option func(*config)

type config struct {
	template  TemplateFunc
	leakCheck bool
}

// WithTemplate makes Main create a template database once, prepare it with
// setup before the tests run, and drop it after; [NewDatabase] and
// [NewPool] then return copies of it.
func WithTemplate(setup TemplateFunc) Option {
	return func(c *config) { c.template = setup }
}

// WithLeakCheck makes Main fail a passing test binary that leaves
// goroutines running when its tests are done.
func WithLeakCheck() Option {
	return func(c *config) { c.leakCheck = true }
}

// state is what Main shares with the helpers. Test support only.
var (
	mu           sync.Mutex
	adminConnStr string // connection string of the maintenance database
	templateName string // name of the template database, if any
	seq          atomic.Uint64
)

// Timeouts for the server start, the template setup, and each
// CREATE/DROP DATABASE.
const (
	startTimeout    = 2 * time.Minute
	templateTimeout = 5 * time.Minute
	opTimeout       = time.Minute
)

// Main starts one throwaway server for the package's tests (Fast settings)
// unless PGFLOW_TEST_DATABASE_URL is set, prepares the template if
// WithTemplate is given, runs the tests, drops the template, stops the
// server, and returns the exit code. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }
//
// If no server can be had (e.g. PostgreSQL is not installed) it reports why
// and returns 1 without running the tests. When tests fail it prints the
// end of the throwaway server's log before deleting it.
func Main(m *testing.M, opts ...Option) int {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}

	connStr := os.Getenv(EnvURL)
	var srv *throwawaypg.Server
	if connStr == "" {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		var err error
		srv, err = throwawaypg.New(ctx, throwawaypg.Options{Fast: true})
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "testdb: cannot start a PostgreSQL server for the tests: %v\n"+
				"testdb: install PostgreSQL, or set %s to the URL of a server where the tests may create databases\n", err, EnvURL)
			return 1
		}
		defer func() {
			if err := srv.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "testdb: stopping the server: %v\n", err)
			}
		}()
		connStr = srv.ConnString()
	}
	setState(connStr, "")

	if cfg.template != nil {
		ctx, cancel := context.WithTimeout(context.Background(), templateTimeout)
		name, err := createTemplate(ctx, connStr, cfg.template)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "testdb: preparing the template database: %v\n", err)
			return 1
		}
		setState(connStr, name)
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			if err := dropTemplate(ctx, connStr, name); err != nil {
				fmt.Fprintf(os.Stderr, "testdb: dropping the template database: %v\n", err)
			}
		}()
	}
	defer setState("", "")

	code := m.Run()
	if code == 0 && cfg.leakCheck {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "testdb: goroutines leaked by the tests: %v\n", err)
			code = 1
		}
	}
	if code != 0 && srv != nil {
		printLogTail(srv.LogPath(), 40)
	}
	return code
}

// printLogTail shows the end of the server log after failed tests, before
// Close deletes it.
func printLogTail(path string, lines int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	fmt.Fprintf(os.Stderr, "testdb: tests failed; last lines of the PostgreSQL server log %s:\n%s\n", path, strings.Join(all, "\n"))
}

func setState(connStr, tmpl string) {
	mu.Lock()
	defer mu.Unlock()
	adminConnStr, templateName = connStr, tmpl
}

func getState() (connStr, tmpl string) {
	mu.Lock()
	defer mu.Unlock()
	return adminConnStr, templateName
}

// AdminURL returns the connection string of the server's maintenance
// database: the throwaway server's "postgres" database, or
// PGFLOW_TEST_DATABASE_URL. Outside Main it returns PGFLOW_TEST_DATABASE_URL,
// which may be empty.
func AdminURL() string {
	if connStr, _ := getState(); connStr != "" {
		return connStr
	}
	return os.Getenv(EnvURL)
}

// Template returns the name of the template database prepared by Main with
// WithTemplate, or "" if there is none.
func Template() string {
	_, tmpl := getState()
	return tmpl
}

// NewDatabase creates a fresh, uniquely named database for the test (a copy
// of the template when Main was given WithTemplate), returns its connection
// string, and drops it (WITH (FORCE)) when the test and its subtests finish.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return NewDatabaseFrom(t, Template())
}

// NewDatabaseFrom is NewDatabase with an explicit template database; ""
// means the server's default (template1, i.e. an empty database). The
// template must have no open connections.
func NewDatabaseFrom(t testing.TB, template string) string {
	t.Helper()
	connStr := AdminURL()
	if connStr == "" {
		t.Fatalf("testdb: no PostgreSQL server: call testdb.Main from TestMain or set %s", EnvURL)
	}
	name := uniqueName("pgflow_test")
	dbURL, err := withDatabase(connStr, name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		sql += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if err := execAdmin(ctx, connStr, sql); err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() {
		// t.Context() is already canceled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := execAdmin(ctx, connStr, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("testdb: %v", err)
		}
	})
	return dbURL
}

// NewPool creates a database with NewDatabase and returns a pool connected
// to it. The pool is closed when the test finishes, before the database is
// dropped.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	connStr := NewDatabase(t)
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, connStr)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(pool.Close) // runs before the drop registered by NewDatabase
	return pool
}

// uniqueName returns a database name unique across the parallel tests of
// one binary (counter) and across test binaries, possibly on different
// machines or containers, sharing a server (pid and random suffix).
func uniqueName(prefix string) string {
	var r [4]byte
	_, _ = rand.Read(r[:]) // never fails
	return fmt.Sprintf("%s_%d_%d_%s", prefix, os.Getpid(), seq.Add(1), hex.EncodeToString(r[:]))
}

// execAdmin runs one statement on the maintenance database.
func execAdmin(ctx context.Context, connStr, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, connStr)
	if err != nil {
		return fmt.Errorf("connecting to the maintenance database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// createTemplate creates a database, prepares it with setup, and turns it
// into a template nobody can connect to (connections to the template would
// make CREATE DATABASE ... TEMPLATE fail).
func createTemplate(ctx context.Context, connStr string, setup TemplateFunc) (string, error) {
	name := uniqueName("pgflow_template")
	ident := pgx.Identifier{name}.Sanitize()
	if err := execAdmin(ctx, connStr, "CREATE DATABASE "+ident); err != nil {
		return "", err
	}
	dbURL, err := withDatabase(connStr, name)
	if err == nil {
		err = setup(ctx, dbURL)
	}
	if err == nil {
		err = execAdmin(ctx, connStr, "ALTER DATABASE "+ident+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
	}
	if err == nil {
		err = execAdmin(ctx, connStr, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name)
	}
	if err != nil {
		if derr := execAdmin(context.WithoutCancel(ctx), connStr, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); derr != nil {
			err = fmt.Errorf("%w (and dropping %s: %v)", err, name, derr)
		}
		return "", err
	}
	return name, nil
}

func dropTemplate(ctx context.Context, connStr, name string) error {
	ident := pgx.Identifier{name}.Sanitize()
	if err := execAdmin(ctx, connStr, "ALTER DATABASE "+ident+" WITH IS_TEMPLATE false"); err != nil {
		return err
	}
	return execAdmin(ctx, connStr, "DROP DATABASE "+ident+" WITH (FORCE)")
}

// withDatabase returns connString with its database replaced by name. It
// accepts URLs (postgres://...) and keyword/value strings (host=... ...).
func withDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("parsing %s: %w", EnvURL, err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// In keyword/value strings a later keyword overrides an earlier one.
	return strings.TrimSpace(connString) + " dbname='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(name) + "'", nil
}
