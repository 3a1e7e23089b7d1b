package throwawaypg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrClosed is returned by methods of a [Server] after [Server.Close].
var ErrClosed = errors.New("throwawaypg: server closed")

// Default values used when the corresponding [Options] field is zero.
const (
	DefaultMaxConnections = 200
	DefaultSharedBuffers  = "128MB"
)

// Options configures [New]. The zero value starts a durable server with
// default settings, using binaries found on PATH or under
// /usr/lib/postgresql/*/bin.
type Options struct {
	// BinDir is the directory holding initdb, pg_ctl and postgres. When set,
	// no other place is searched.
	BinDir string

	// Dir is the parent of the temporary directory that holds the data
	// directory, the log and the Unix socket. Empty means os.TempDir(), or
	// /tmp if running as root and the OS user "postgres" cannot reach
	// os.TempDir(). When running as root, Dir and all its parents must be
	// searchable by the "postgres" user; t.TempDir() is not (it is 0700 root).
	Dir string

	// Fast turns off durability (fsync, synchronous_commit and
	// full_page_writes) for speed. A crash of the machine can then corrupt
	// the data; fine for tests, wrong for anything you want to keep.
	Fast bool

	// MaxConnections is max_connections; 0 means DefaultMaxConnections.
	MaxConnections int

	// SharedBuffers is shared_buffers, e.g. "64MB"; empty means
	// DefaultSharedBuffers.
	SharedBuffers string

	// Settings are extra server settings (as "postgres -c key=value"),
	// applied after, and so overriding, the ones above. Values are raw and
	// quoted by this package. The keys "port" and "unix_socket_directories"
	// are managed by this package and rejected.
	Settings map[string]string

	// Logger receives progress messages; nil means silent.
	Logger *slog.Logger
}

// Server is a private PostgreSQL server running from a temporary directory.
// Its methods are safe for concurrent use. Call [Server.Close] when done: it
// stops the server and removes all of its files.
//
// As a safety net a watchdog process stops the server and removes its files
// when the process that started it exits without calling Close, even when it
// is killed with SIGKILL. Do not rely on this: always call Close. (pg_ctl
// starts the server as a daemon in its own session, so without Close and
// without the watchdog it would outlive the process.)
type Server struct {
	bins    binaries
	acct    *account
	log     *slog.Logger
	dir     string
	dataDir string
	logPath string
	port    int
	env     []string

	mu     sync.Mutex
	closed bool
	watch  *watchdog
}

// env abstracts what New reads from the environment, for tests.
type env struct {
	path     string
	glob     string
	pickPort func() (int, error)
}

func defaultEnv() env {
	return env{path: os.Getenv("PATH"), glob: defaultGlob, pickPort: freePort}
}

// portAttempts bounds how often New retries with another port when the one
// it picked was taken before the server could bind it.
const portAttempts = 5

// New initializes a data directory in a fresh temporary directory and
// starts a PostgreSQL server on a free TCP port of 127.0.0.1 (and a Unix
// socket in that directory), waiting until it accepts connections or ctx is
// done. The superuser is "postgres" with trust authentication, so no
// password is needed. When running as root the server runs as the OS user
// "postgres". On failure New removes everything it created and the error
// includes the tail of the server log.
func New(ctx context.Context, opts Options) (*Server, error) {
	return newServer(ctx, opts, defaultEnv())
}

func newServer(ctx context.Context, opts Options, e env) (_ *Server, err error) {
	begin := time.Now()
	conf, err := opts.config()
	if err != nil {
		return nil, err
	}
	bins, err := findBinaries(opts.BinDir, e.path, e.glob)
	if err != nil {
		return nil, err
	}
	acct, err := currentAccount()
	if err != nil {
		return nil, err
	}
	parent, err := chooseParent(opts.Dir, acct)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "throwawaypg-")
	if err != nil {
		return nil, fmt.Errorf("throwawaypg: creating temporary directory: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		bins:    bins,
		acct:    acct,
		log:     logger,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "server.log"),
		env:     childEnv(dir),
	}
	defer func() {
		if err != nil {
			if tail := s.logTail(0); tail != "" {
				err = fmt.Errorf("%w\n--- tail of %s ---\n%s", err, s.logPath, tail)
			}
			if cerr := s.Close(); cerr != nil {
				s.log.Warn("throwawaypg: cleanup after failed start", "error", cerr)
			}
		}
	}()
	if err := acct.chown(dir); err != nil {
		return nil, fmt.Errorf("throwawaypg: giving %s to OS user %q: %w", dir, acct.name, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("throwawaypg: %w", err)
	}
	if w, werr := startWatchdog(acct, bins.pgCtl, s.dataDir, dir); werr != nil {
		s.log.Warn("throwawaypg: no watchdog; the server survives if this process dies without Close", "error", werr)
	} else {
		s.watch = w
	}
	s.log.Debug("throwawaypg: initdb", "dir", dir, "bin", bins.initdb, "user", acct.name)

	t0 := time.Now()
	if err := s.initdb(ctx); err != nil {
		return nil, err
	}
	if err := s.writeConfig(conf); err != nil {
		return nil, err
	}
	initDuration := time.Since(t0)

	for attempt := 1; ; attempt++ {
		port, err := e.pickPort()
		if err != nil {
			return nil, fmt.Errorf("throwawaypg: picking a free port: %w", err)
		}
		s.port = port
		offset := s.logSize()
		err = s.startLocked(ctx)
		if err == nil {
			break
		}
		if attempt < portAttempts && ctx.Err() == nil && portTaken(s.logSince(offset)) {
			s.log.Debug("throwawaypg: port taken, retrying", "port", port, "attempt", attempt)
			continue
		}
		return nil, err
	}
	s.log.Info("throwawaypg: server started", "url", s.ConnString(), "dir", dir,
		"initdb", initDuration.Round(time.Millisecond), "total", time.Since(begin).Round(time.Millisecond))
	return s, nil
}

// config validates the options and returns the server settings in the order
// they are written to postgresql.conf (port and socket directory excluded).
func (o Options) config() ([][2]string, error) {
	if o.MaxConnections < 0 {
		return nil, fmt.Errorf("throwawaypg: negative Options.MaxConnections %d", o.MaxConnections)
	}
	maxConns := o.MaxConnections
	if maxConns == 0 {
		maxConns = DefaultMaxConnections
	}
	sharedBuffers := o.SharedBuffers
	if sharedBuffers == "" {
		sharedBuffers = DefaultSharedBuffers
	}
	conf := [][2]string{
		{"listen_addresses", "127.0.0.1"},
		{"max_connections", strconv.Itoa(maxConns)},
		{"shared_buffers", sharedBuffers},
	}
	if o.Fast {
		conf = append(conf,
			[2]string{"fsync", "off"},
			[2]string{"synchronous_commit", "off"},
			[2]string{"full_page_writes", "off"},
		)
	}
	for _, k := range slices.Sorted(maps.Keys(o.Settings)) {
		if !settingName.MatchString(k) {
			return nil, fmt.Errorf("throwawaypg: invalid setting name %q in Options.Settings", k)
		}
		switch strings.ToLower(k) {
		case "port", "unix_socket_directories":
			return nil, fmt.Errorf("throwawaypg: setting %q is managed by throwawaypg and cannot be set in Options.Settings", k)
		}
		conf = append(conf, [2]string{k, o.Settings[k]})
	}
	return conf, nil
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// chooseParent returns the directory to create the temporary directory in.
func chooseParent(dir string, acct *account) (string, error) {
	if dir != "" {
		return dir, acct.checkTraversable(dir)
	}
	dir = os.TempDir()
	err := acct.checkTraversable(dir)
	if err != nil && acct.switched() && acct.checkTraversable("/tmp") == nil {
		return "/tmp", nil
	}
	return dir, err
}

// childEnv is the environment of the server programs: the current one
// without PG* variables (PGDATA, PGPORT, PGOPTIONS... would interfere), with
// HOME pointing at a directory the server's user can use.
func childEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

// command prepares one of the server programs to run as the server's user.
func (s *Server) command(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = s.env
	cmd.Dir = s.dir // the server's user may not be able to enter our working directory
	cmd.WaitDelay = 5 * time.Second
	s.acct.apply(cmd)
	return cmd
}

// run runs a program and returns its error with its output attached.
func (s *Server) run(ctx context.Context, path string, args ...string) error {
	cmd := s.command(ctx, path, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		if msg != "" {
			return fmt.Errorf("%s %s: %w: %s", filepath.Base(path), args[0], err, tail(msg, 20))
		}
		return fmt.Errorf("%s %s: %w", filepath.Base(path), args[0], err)
	}
	return nil
}

func (s *Server) initdb(ctx context.Context) error {
	err := s.run(ctx, s.bins.initdb,
		"-D", s.dataDir,
		"-U", "postgres",
		"--auth=trust",
		"-E", "UTF8",
		"--locale=C",
		"--no-sync",
		"--no-instructions",
	)
	if err != nil {
		return fmt.Errorf("throwawaypg: %w", err)
	}
	return nil
}

// writeConfig appends the settings to postgresql.conf, where later entries
// override earlier ones. Writing them to the file rather than passing them on
// the command line sidesteps shell quoting (pg_ctl runs postgres via sh) and
// makes Start use the same settings.
func (s *Server) writeConfig(conf [][2]string) error {
	var b strings.Builder
	b.WriteString("\n# Added by throwawaypg.\n")
	all := append([][2]string{{"unix_socket_directories", s.dir}}, conf...)
	for _, kv := range all {
		fmt.Fprintf(&b, "%s = %s\n", kv[0], quoteConf(kv[1]))
	}
	f, err := os.OpenFile(filepath.Join(s.dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("throwawaypg: %w", err)
	}
	_, err = f.WriteString(b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("throwawaypg: writing postgresql.conf: %w", err)
	}
	return nil
}

// quoteConf quotes a value for postgresql.conf, whose quoted strings use
// doubled single quotes and backslash escapes.
func quoteConf(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `''`, "\n", `\n`, "\r", `\r`)
	return "'" + r.Replace(v) + "'"
}

// timeoutSeconds converts the time left before ctx's deadline into a pg_ctl
// -t argument (def when ctx has no deadline).
func timeoutSeconds(ctx context.Context, def time.Duration) string {
	d := def
	if deadline, ok := ctx.Deadline(); ok {
		d = time.Until(deadline)
	}
	secs := int((d + time.Second - 1) / time.Second)
	return strconv.Itoa(max(secs, 1))
}

// startLocked starts the server on s.port and waits until it accepts
// connections. The caller holds s.mu or has exclusive access.
func (s *Server) startLocked(ctx context.Context) error {
	t0 := time.Now()
	err := s.run(ctx, s.bins.pgCtl, "start",
		"-w",
		"-t", timeoutSeconds(ctx, time.Minute),
		"-D", s.dataDir,
		"-l", s.logPath,
		"-o", "-p "+strconv.Itoa(s.port),
	)
	if err != nil {
		// pg_ctl may have given up (or been killed) while the postmaster
		// still comes up: make sure it is not left running.
		if s.isRunning() {
			_ = s.stopLocked(5*time.Second, "immediate")
		}
		return fmt.Errorf("throwawaypg: starting server on port %d: %w", s.port, err)
	}
	if err := s.waitReady(ctx); err != nil {
		return fmt.Errorf("throwawaypg: server on port %d started but does not accept connections: %w", s.port, err)
	}
	s.log.Debug("throwawaypg: accepting connections", "port", s.port, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// waitReady connects with pgx until it works or ctx (capped at 30 s) is done.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for {
		conn, err := pgx.Connect(ctx, s.ConnString())
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(context.WithoutCancel(ctx))
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-ticker.C:
		}
	}
}

// stopLocked runs pg_ctl stop with the given mode ("fast" or "immediate").
func (s *Server) stopLocked(timeout time.Duration, mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	return s.stopCtx(ctx, timeout, mode)
}

func (s *Server) stopCtx(ctx context.Context, def time.Duration, mode string) error {
	err := s.run(ctx, s.bins.pgCtl, "stop",
		"-w",
		"-t", timeoutSeconds(ctx, def),
		"-D", s.dataDir,
		"-m", mode,
	)
	if err != nil {
		return fmt.Errorf("throwawaypg: stopping server (%s): %w", mode, err)
	}
	return nil
}

// isRunning reports whether the postmaster named in postmaster.pid is
// alive. The postmaster removes the file when it exits normally.
func (s *Server) isRunning() bool {
	pid, err := s.postmasterPID()
	return err == nil && processAlive(pid)
}

// postmasterPID reads the postmaster's process id from postmaster.pid.
func (s *Server) postmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("throwawaypg: bad postmaster.pid %q", first)
	}
	return pid, nil
}

// Stop shuts the server down ("fast" mode: open sessions are terminated)
// and keeps its data, so that [Server.Start] can start it again. Stopping a
// stopped server does nothing.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if !s.isRunning() {
		return nil
	}
	return s.stopCtx(ctx, time.Minute, "fast")
}

// Start starts a stopped server again, on the same port and with the same
// settings, so clients can reconnect to the same connection string. It waits
// until the server accepts connections or ctx is done. Starting a running
// server does nothing. It fails if another program took the port meanwhile.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.isRunning() {
		return nil
	}
	offset := s.logSize()
	if err := s.startLocked(ctx); err != nil {
		if tail := s.logTail(offset); tail != "" {
			err = fmt.Errorf("%w\n--- tail of %s ---\n%s", err, s.logPath, tail)
		}
		return err
	}
	return nil
}

// Close stops the server (fast shutdown, immediate if that fails) and
// removes its temporary directory with everything in it. It is safe to call
// after Stop, and more than once: later calls do nothing and return nil.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.watch.disarm()
	s.watch = nil

	var errs []error
	if s.isRunning() {
		if err := s.stopLocked(10*time.Second, "fast"); err != nil {
			s.log.Debug("throwawaypg: fast shutdown failed", "error", err)
			if err := s.stopLocked(10*time.Second, "immediate"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("throwawaypg: removing %s: %w", s.dir, err))
	}
	s.log.Debug("throwawaypg: closed", "dir", s.dir)
	return errors.Join(errs...)
}

// ConnString returns the URL of the "postgres" database, as user
// "postgres" over TCP, e.g.
// postgres://postgres@127.0.0.1:54321/postgres?sslmode=disable.
func (s *Server) ConnString() string {
	return s.ConnStringFor("postgres")
}

// ConnStringFor returns the URL of the given database on the server.
func (s *Server) ConnStringFor(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the TCP port the server listens on (on 127.0.0.1). It stays
// the same across Stop and Start.
func (s *Server) Port() int { return s.port }

// SocketDir returns the directory holding the server's Unix socket, usable
// as host in connection strings (e.g. "host=/tmp/throwawaypg-123 port=5432").
func (s *Server) SocketDir() string { return s.dir }

// DataDir returns the server's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// LogPath returns the path of the server's log file.
func (s *Server) LogPath() string { return s.logPath }

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)

// CreateDatabase creates a database named name (a plain SQL identifier:
// letters, digits, underscores and dollar signs, not starting with a digit,
// at most 63 bytes; case is preserved) and returns its connection string.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if !identifier.MatchString(name) || len(name) > 63 {
		return "", fmt.Errorf("throwawaypg: invalid database name %q", name)
	}
	conn, err := pgx.Connect(ctx, s.ConnString())
	if err != nil {
		return "", fmt.Errorf("throwawaypg: creating database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("throwawaypg: creating database %s: %w", name, err)
	}
	return s.ConnStringFor(name), nil
}

// freePort asks the kernel for a free TCP port on 127.0.0.1. The port may be
// taken again before the server binds it; New retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// portTaken reports whether a server log shows a failure to bind the port.
func portTaken(log string) bool {
	return strings.Contains(log, "could not bind") ||
		strings.Contains(log, "could not create any TCP/IP sockets") ||
		strings.Contains(log, "Address already in use")
}

func (s *Server) logSize() int64 {
	fi, err := os.Stat(s.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns the log written after offset (at most its last 64 KiB).
func (s *Server) logSince(offset int64) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxRead = 64 << 10
	if size := s.logSize(); size-offset > maxRead {
		offset = size - maxRead
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, maxRead))
	return string(b)
}

// logTail returns the last lines of the log written after offset.
func (s *Server) logTail(offset int64) string {
	return tail(strings.TrimSpace(s.logSince(offset)), 25)
}

// tail returns the last n lines of text.
func tail(text string, n int) string {
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
