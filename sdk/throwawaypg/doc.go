// Package throwawaypg starts private, throwaway PostgreSQL servers from the
// locally installed PostgreSQL binaries, for tests, demos and benchmarks.
//
// Each [Server] lives in its own temporary directory (data directory, log
// file and Unix socket) and listens on its own free TCP port of 127.0.0.1,
// so any number of servers can run side by side. The superuser is
// "postgres" with trust authentication. No Docker and no running server are
// needed, only the server binaries (initdb, pg_ctl, postgres), which are
// looked up on PATH, then under /usr/lib/postgresql/*/bin (the newest major
// version first), or taken from [Options.BinDir]. If they are missing, [New]
// returns an error wrapping [ErrNotInstalled].
//
// PostgreSQL refuses to run as root; when the calling process is root, the
// server programs run as the OS user "postgres" (which must exist) and the
// temporary directory is given to that user.
//
// Always call [Server.Close]: it stops the server and deletes its files. A
// watchdog process cleans up if the calling process dies first, but a
// server started by pg_ctl deliberately outlives its parent otherwise.
//
// Usage in a test:
//
//	func TestSomething(t *testing.T) {
//		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
//		defer cancel()
//		srv, err := throwawaypg.New(ctx, throwawaypg.Options{Fast: true})
//		if errors.Is(err, throwawaypg.ErrNotInstalled) {
//			t.Skip(err)
//		}
//		if err != nil {
//			t.Fatal(err)
//		}
//		t.Cleanup(func() { _ = srv.Close() })
//
//		conn, err := pgx.Connect(ctx, srv.ConnString())
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer conn.Close(ctx)
//		// ...
//	}
//
// For a whole package's tests, start one server in TestMain and give each
// test its own database with [Server.CreateDatabase].
package throwawaypg
