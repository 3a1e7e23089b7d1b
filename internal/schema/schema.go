// Package schema holds the core pgflow schema as versioned SQL migrations and
// applies them.
//
// Migrations live in migrations/NNNN_name.sql, are embedded in the binary,
// and are applied in order, each in the same transaction as the bookkeeping
// row that records it. The whole run holds a transaction-level advisory lock,
// so any number of processes may call Migrate at once.
package schema

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// advisoryLockKey identifies the migration lock ("pgflow" in ASCII).
const advisoryLockKey int64 = 0x7067666c6f77

// Migration is one embedded schema version.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// ErrSchemaTooNew reports a database migrated by a newer pgflow than this one.
var ErrSchemaTooNew = errors.New("pgflow schema is newer than this binary")

// Querier is what Migrate needs from a pool or a connection.
type Querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

var migrationName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("embedded migration %q: name must look like 0001_name.sql", e.Name())
		}
		version, _ := strconv.Atoi(m[1])
		body, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read embedded migration %s: %w", e.Name(), err)
		}
		out = append(out, Migration{Version: version, Name: m[2], SQL: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("embedded migrations: expected version %d, found %d", i+1, m.Version)
		}
	}
	return out, nil
}

// LatestVersion is the newest schema version this binary knows.
func LatestVersion() int {
	ms, err := Migrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// Migrate installs or upgrades the pgflow schema to the latest embedded
// version and returns the version the database is at afterwards. It is
// idempotent and safe to call from many processes at once. A database at a
// newer version than this binary knows is refused with ErrSchemaTooNew.
func Migrate(ctx context.Context, db Querier) (int, error) {
	ms, err := Migrations()
	if err != nil {
		return 0, err
	}
	return migrate(ctx, db, ms)
}

// migrate applies the migrations ms (the embedded ones, or the first of
// them, as a database an older binary migrated would be).
func migrate(ctx context.Context, db Querier, ms []Migration) (int, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("pgflow migrate: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // rollback after commit is a no-op

	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", advisoryLockKey); err != nil {
		return 0, fmt.Errorf("pgflow migrate: take advisory lock: %w", err)
	}
	// An up-to-date schema needs nothing, not even the right to create a
	// schema: roles that only run workers may call Migrate at start-up.
	if current, err := Version(ctx, tx); err == nil && current == len(ms) {
		return current, tx.Commit(ctx)
	}
	if _, err := tx.Exec(ctx, bookkeepingSQL); err != nil {
		return 0, fmt.Errorf("pgflow migrate: create bookkeeping table: %w", err)
	}
	var current int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM pgflow.schema_migrations").Scan(&current); err != nil {
		return 0, fmt.Errorf("pgflow migrate: read schema version: %w", err)
	}
	if current > len(ms) {
		return current, fmt.Errorf("%w: the database is at version %d, this binary knows versions 1 to %d; upgrade pgflow",
			ErrSchemaTooNew, current, len(ms))
	}
	for _, m := range ms[current:] {
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return current, fmt.Errorf("pgflow migrate: apply %04d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO pgflow.schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
			return current, fmt.Errorf("pgflow migrate: record %04d_%s: %w", m.Version, m.Name, err)
		}
		current = m.Version
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("pgflow migrate: commit: %w", err)
	}
	return current, nil
}

// Version returns the schema version a database is at (0: not installed).
func Version(ctx context.Context, db interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) (int, error) {
	var installed bool
	if err := db.QueryRow(ctx, "SELECT to_regclass('pgflow.schema_migrations') IS NOT NULL").Scan(&installed); err != nil {
		return 0, fmt.Errorf("pgflow: read schema version: %w", err)
	}
	if !installed {
		return 0, nil
	}
	var v int
	if err := db.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM pgflow.schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("pgflow: read schema version: %w", err)
	}
	return v, nil
}
