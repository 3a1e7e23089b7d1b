//go:build unix

package throwawaypg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// start starts a server for a test and closes it in Cleanup.
func start(t *testing.T, opts Options) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := New(ctx, opts)
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func connect(t *testing.T, ctx context.Context, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestStartConnectSelect(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	ctx := testContext(t)

	want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.Port())
	if got := s.ConnString(); got != want {
		t.Errorf("ConnString() = %q, want %q", got, want)
	}
	conn := connect(t, ctx, s.ConnString())
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	// Durable by default, and the managed settings are in effect.
	for sql, want := range map[string]string{
		"SHOW fsync":              "on",
		"SHOW synchronous_commit": "on",
		"SHOW max_connections":    "200",
		"SHOW listen_addresses":   "127.0.0.1",
		"SHOW server_encoding":    "UTF8",
		"SHOW lc_collate":         "C",
		"SELECT current_user":     "postgres",
	} {
		if got := queryString(t, ctx, conn, sql); got != want {
			t.Errorf("%s = %q, want %q", sql, got, want)
		}
	}

	// The Unix socket works too.
	sock := connect(t, ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", s.SocketDir(), s.Port()))
	if got := queryString(t, ctx, sock, "SELECT 'unix'"); got != "unix" {
		t.Errorf("over the socket: %q", got)
	}

	if s.DataDir() != filepath.Join(s.SocketDir(), "data") {
		t.Errorf("DataDir() = %q", s.DataDir())
	}
	if _, err := os.Stat(filepath.Join(s.DataDir(), "PG_VERSION")); err != nil {
		t.Errorf("data directory: %v", err)
	}
	if b, err := os.ReadFile(s.LogPath()); err != nil || !strings.Contains(string(b), "ready to accept connections") {
		t.Errorf("log %s: %v\n%s", s.LogPath(), err, b)
	}
}

func TestFastAndSettings(t *testing.T) {
	t.Parallel()
	s := start(t, Options{
		Fast:           true,
		MaxConnections: 42,
		SharedBuffers:  "16MB",
		Settings: map[string]string{
			"work_mem":         "7MB",
			"application_name": `it's a "test" \ path`,
			"max_connections":  "43", // Settings win over the fields
		},
	})
	ctx := testContext(t)
	conn := connect(t, ctx, s.ConnString())
	for sql, want := range map[string]string{
		"SHOW fsync":              "off",
		"SHOW synchronous_commit": "off",
		"SHOW full_page_writes":   "off",
		"SHOW shared_buffers":     "16MB",
		"SHOW work_mem":           "7MB",
		"SHOW max_connections":    "43",
		"SELECT current_setting('application_name', true)": `it's a "test" \ path`,
	} {
		if got := queryString(t, ctx, conn, sql); got != want {
			t.Errorf("%s = %q, want %q", sql, got, want)
		}
	}
}

func TestInvalidOptions(t *testing.T) {
	t.Parallel()
	for _, opts := range []Options{
		{MaxConnections: -1},
		{Settings: map[string]string{"port": "5432"}},
		{Settings: map[string]string{"Unix_Socket_Directories": "/x"}},
		{Settings: map[string]string{"bad name": "1"}},
		{Settings: map[string]string{"x = 1\nfsync": "off"}},
	} {
		if _, err := New(t.Context(), opts); err == nil {
			t.Errorf("New(%+v) succeeded", opts)
		}
	}
}

func TestBadSettingFailsWithLogTailAndCleansUp(t *testing.T) {
	t.Parallel()
	// Not t.TempDir(): when running as root, the postgres user cannot reach it.
	parent, err := os.MkdirTemp("", "throwawaypg-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	_, err = New(ctx, Options{Dir: parent, Settings: map[string]string{"shared_buffers": "lots"}})
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err == nil {
		t.Fatal("New with an invalid setting succeeded")
	}
	if !strings.Contains(err.Error(), `invalid value for parameter "shared_buffers"`) {
		t.Errorf("error lacks the server log:\n%v", err)
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 0 {
		t.Errorf("left behind in %s: %v", parent, entries)
	}
}

func TestTwoInstancesAtOnce(t *testing.T) {
	t.Parallel()
	var (
		wg      sync.WaitGroup
		servers [2]*Server
		errs    [2]error
	)
	ctx := testContext(t)
	for i := range servers {
		wg.Go(func() { servers[i], errs[i] = New(ctx, Options{Fast: true}) })
	}
	wg.Wait()
	for i, s := range servers {
		if s != nil {
			t.Cleanup(func() { _ = s.Close() })
		}
		if errors.Is(errs[i], ErrNotInstalled) {
			t.Skip(errs[i])
		}
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
	}
	a, b := servers[0], servers[1]
	if a.Port() == b.Port() || a.DataDir() == b.DataDir() {
		t.Fatalf("instances share port or directory: %d %d %s %s", a.Port(), b.Port(), a.DataDir(), b.DataDir())
	}
	ca, cb := connect(t, ctx, a.ConnString()), connect(t, ctx, b.ConnString())
	if _, err := ca.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, ctx, cb, "SELECT coalesce(to_regclass('only_in_a')::text, 'absent')"); got != "absent" {
		t.Errorf("table created in a is visible in b: %q", got)
	}
}

func TestStopStartSamePort(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Fast: true})
	ctx := testContext(t)
	url, port := s.ConnString(), s.Port()

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}

	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("connection still works after Stop")
	}
	conn.Close(ctx)
	if c, err := pgx.Connect(ctx, url); err == nil {
		c.Close(ctx)
		t.Fatal("connected to a stopped server")
	}

	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Errorf("second Start: %v", err)
	}
	if s.Port() != port || s.ConnString() != url {
		t.Fatalf("port changed: %d -> %d", port, s.Port())
	}
	conn2 := connect(t, ctx, url)
	if got := queryString(t, ctx, conn2, "SELECT x::text FROM kept"); got != "42" {
		t.Errorf("data after restart: %q", got)
	}
}

func TestStartFailsWhenPortTaken(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Fast: true})
	ctx := testContext(t)
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port()))
	if err != nil {
		t.Skipf("cannot occupy the port: %v", err)
	}
	err = s.Start(ctx)
	l.Close()
	if err == nil {
		t.Fatal("Start succeeded on an occupied port")
	}
	if !strings.Contains(err.Error(), "could not") {
		t.Errorf("error lacks the log tail: %v", err)
	}
	// Once the port is free again, Start works.
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestNewRetriesWhenPortTaken(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	e := defaultEnv()
	e.pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return freePort()
	}
	ctx := testContext(t)
	s, err := newServer(ctx, Options{Fast: true}, e)
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if calls != 2 || s.Port() == taken {
		t.Errorf("calls = %d, port = %d (taken %d)", calls, s.Port(), taken)
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s, err := New(ctx, Options{Fast: true})
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := s.SocketDir()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still exists: %v", dir, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if c, err := pgx.Connect(ctx, s.ConnString()); err == nil {
		c.Close(ctx)
		t.Error("server still accepts connections after Close")
	}
	if err := s.Start(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if err := s.Stop(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Stop after Close: %v", err)
	}
}

func TestCloseAfterStop(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s, err := New(ctx, Options{Fast: true})
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.SocketDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still exists: %v", s.SocketDir(), err)
	}
}

func TestCreateDatabase(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Fast: true})
	ctx := testContext(t)
	url, err := s.CreateDatabase(ctx, "MixedCase_db")
	if err != nil {
		t.Fatal(err)
	}
	if url != s.ConnStringFor("MixedCase_db") {
		t.Errorf("CreateDatabase returned %q", url)
	}
	conn := connect(t, ctx, url)
	if got := queryString(t, ctx, conn, "SELECT current_database()"); got != "MixedCase_db" {
		t.Errorf("current_database() = %q", got)
	}
	for _, bad := range []string{"", "1abc", `a"b`, "a b", "x;DROP DATABASE postgres", strings.Repeat("a", 64)} {
		if _, err := s.CreateDatabase(ctx, bad); err == nil {
			t.Errorf("CreateDatabase(%q) succeeded", bad)
		}
	}
}

func TestNotInstalled(t *testing.T) {
	t.Parallel()
	_, err := New(t.Context(), Options{BinDir: t.TempDir()})
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("New with an empty BinDir: %v, want ErrNotInstalled", err)
	}
	if !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("error lacks an installation hint: %v", err)
	}

	// Nothing on PATH and nothing under the glob.
	root := t.TempDir()
	_, err = findBinaries("", "", filepath.Join(root, "*", "bin"))
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("findBinaries with empty PATH: %v, want ErrNotInstalled", err)
	}
	for _, want := range []string{"initdb, pg_ctl", "not found on PATH or under", `"apt-get install postgresql"`, `"brew install postgresql"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// fakeBinDir creates dir with executable files for the given programs.
func fakeBinDir(t *testing.T, dir string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindBinaries(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	glob := filepath.Join(root, "lib", "*", "bin")
	all := []string{"initdb", "pg_ctl", "postgres"}
	fakeBinDir(t, filepath.Join(root, "lib", "9.6", "bin"), all...)
	fakeBinDir(t, filepath.Join(root, "lib", "15", "bin"), all...)
	fakeBinDir(t, filepath.Join(root, "lib", "10", "bin"), all...)
	fakeBinDir(t, filepath.Join(root, "lib", "16", "bin"), "initdb") // incomplete: skipped
	fakeBinDir(t, filepath.Join(root, "lib", "main", "bin"), all...) // not a version: last
	fakeBinDir(t, filepath.Join(root, "path1"), "pg_ctl")
	fakeBinDir(t, filepath.Join(root, "path2"), "initdb", "postgres", "pg_ctl")
	if err := os.WriteFile(filepath.Join(root, "path1", "initdb"), nil, 0o644); err != nil { // not executable
		t.Fatal(err)
	}

	b, err := findBinaries("", "", glob)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "lib", "15", "bin", "initdb"); b.initdb != want {
		t.Errorf("glob: initdb = %q, want %q", b.initdb, want)
	}

	path := strings.Join([]string{"relative/dir", filepath.Join(root, "path1"), filepath.Join(root, "path2")}, string(os.PathListSeparator))
	b, err = findBinaries("", path, glob)
	if err != nil {
		t.Fatal(err)
	}
	want := binaries{
		initdb:   filepath.Join(root, "path2", "initdb"),
		pgCtl:    filepath.Join(root, "path1", "pg_ctl"),
		postgres: filepath.Join(root, "path2", "postgres"),
	}
	if b != want {
		t.Errorf("PATH: got %+v, want %+v", b, want)
	}

	// Incomplete PATH falls back to the glob.
	b, err = findBinaries("", filepath.Join(root, "path1"), glob)
	if err != nil || b.pgCtl != filepath.Join(root, "lib", "15", "bin", "pg_ctl") {
		t.Errorf("fallback: %+v, %v", b, err)
	}

	// BinDir wins and is exclusive.
	b, err = findBinaries(filepath.Join(root, "lib", "9.6", "bin"), path, glob)
	if err != nil || b.postgres != filepath.Join(root, "lib", "9.6", "bin", "postgres") {
		t.Errorf("BinDir: %+v, %v", b, err)
	}
	_, err = findBinaries(filepath.Join(root, "lib", "16", "bin"), path, glob)
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "pg_ctl, postgres not found") {
		t.Errorf("incomplete BinDir: %v", err)
	}

	order := versionDirs(glob)
	var versions []string
	for _, d := range order {
		versions = append(versions, filepath.Base(filepath.Dir(d)))
	}
	if want := []string{"16", "15", "10", "9.6", "main"}; !slices.Equal(versions, want) {
		t.Errorf("version order = %v, want %v", versions, want)
	}
}

func TestTraversableDirRequiredWhenRoot(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("only relevant when running as root")
	}
	acct, err := currentAccount()
	if err != nil {
		t.Skip(err)
	}
	private := t.TempDir() // 0700, owned by root
	if err := acct.checkTraversable(private); err == nil {
		t.Fatalf("%s reported reachable by %s", private, acct.name)
	}
	_, err = New(t.Context(), Options{Dir: private})
	if errors.Is(err, ErrNotInstalled) {
		t.Skip(err)
	}
	if err == nil || !strings.Contains(err.Error(), "not accessible to the OS user") {
		t.Errorf("New in a private dir: %v", err)
	}
}

func TestAccount(t *testing.T) {
	t.Parallel()
	_, err := accountFor(0, 0, "throwawaypg-no-such-user")
	if err == nil || !strings.Contains(err.Error(), "refuses to run as root") || !strings.Contains(err.Error(), "useradd") {
		t.Errorf("root without the user: %v", err)
	}
	a, err := accountFor(12345, 678, "ignored")
	if err != nil || a.switched() || a.uid != 12345 || a.gid != 678 {
		t.Errorf("non-root: %+v, %v", a, err)
	}
	if _, err := user.Lookup("postgres"); err == nil {
		a, err := accountFor(0, 0, "postgres")
		if err != nil || !a.switched() || a.uid == 0 {
			t.Errorf("root with the postgres user: %+v, %v", a, err)
		}
	}
}

// TestWatchdog kills (SIGKILL) a process that started a server without
// closing it and checks that the watchdog stops the server and removes its
// directory.
func TestWatchdog(t *testing.T) {
	if os.Getenv("THROWAWAYPG_WATCHDOG_CHILD") == "1" {
		s, err := New(context.Background(), Options{Fast: true})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("STARTED", s.SocketDir(), s.ConnString())
		select {} // wait to be killed
	}
	t.Parallel()
	if _, err := findBinaries("", os.Getenv("PATH"), defaultGlob); err != nil {
		t.Skip(err)
	}
	ctx := testContext(t)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWatchdog$")
	cmd.Env = append(os.Environ(), "THROWAWAYPG_WATCHDOG_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("child: %q, %v", line, err)
	}
	fields := strings.Fields(line)
	if len(fields) != 3 || fields[0] != "STARTED" {
		_ = cmd.Process.Kill()
		t.Fatalf("child: %q", line)
	}
	dir, url := fields[1], fields[2]
	if c, err := pgx.Connect(ctx, url); err != nil {
		t.Fatalf("child's server: %v", err)
	} else {
		c.Close(ctx)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for {
		_, statErr := os.Stat(dir)
		if errors.Is(statErr, fs.ErrNotExist) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s not removed after the owner was killed", dir)
		case <-ticker.C:
		}
	}
	if c, err := pgx.Connect(ctx, url); err == nil {
		c.Close(ctx)
		t.Error("server still running after the owner was killed")
	}
}

func TestConfQuoting(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain":    "'plain'",
		"it's":     "'it''s'",
		`a\b`:      `'a\\b'`,
		"two\nlns": `'two\nlns'`,
	} {
		if got := quoteConf(in); got != want {
			t.Errorf("quoteConf(%q) = %s, want %s", in, got, want)
		}
	}
}
