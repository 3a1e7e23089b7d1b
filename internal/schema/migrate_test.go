package schema_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/schema"
	"github.com/pgflow-go/pgflow/internal/testdb"
)

// emptyPool connects to a new database without the pgflow schema.
func emptyPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), testdb.NewDatabaseFrom(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// schemaFingerprint summarises the pgflow schema's objects.
func schemaFingerprint(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var fp string
	err := pool.QueryRow(t.Context(), `
		SELECT string_agg(x, ',' ORDER BY x) FROM (
		  SELECT 'rel:' || c.relname || ':' || c.relkind::text FROM pg_class c
		  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgflow'
		  UNION ALL
		  SELECT 'fn:' || p.oid::regprocedure::text FROM pg_proc p
		  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgflow'
		) s(x)`).Scan(&fp)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func TestMigrateTwice(t *testing.T) {
	t.Parallel()
	pool := emptyPool(t)
	ctx := t.Context()
	if v, err := schema.Version(ctx, pool); err != nil || v != 0 {
		t.Fatalf("version before: %d, %v", v, err)
	}
	v1, err := schema.Migrate(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	first := schemaFingerprint(t, pool)
	v2, err := schema.Migrate(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if v1 != schema.LatestVersion() || v2 != v1 {
		t.Fatalf("versions %d then %d, want %d", v1, v2, schema.LatestVersion())
	}
	if second := schemaFingerprint(t, pool); second != first {
		t.Fatalf("schema changed on the second run:\n%s\n%s", first, second)
	}
	var rows int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pgflow.schema_migrations").Scan(&rows); err != nil || rows != v1 {
		t.Fatalf("%d bookkeeping rows (%v), want %d", rows, err, v1)
	}
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	pool := emptyPool(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = schema.Migrate(t.Context(), pool)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("migrate %d: %v", i, err)
		}
	}
	reference := emptyPool(t)
	if _, err := schema.Migrate(t.Context(), reference); err != nil {
		t.Fatal(err)
	}
	if got, want := schemaFingerprint(t, pool), schemaFingerprint(t, reference); got != want {
		t.Fatalf("concurrent migration gave another schema:\n%s\n%s", got, want)
	}
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	pool := emptyPool(t)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO pgflow.schema_migrations (version, name) VALUES (999, 'future')"); err != nil {
		t.Fatal(err)
	}
	_, err := schema.Migrate(ctx, pool)
	if !errors.Is(err, schema.ErrSchemaTooNew) {
		t.Fatalf("got %v, want ErrSchemaTooNew", err)
	}
	t.Log(err)
}

// The large JSON columns are compressed with lz4 where the server has it.
func TestLargeValuesUseLZ4(t *testing.T) {
	t.Parallel()
	pool := testdb.NewPool(t) // a database the migrations have run on
	ctx := t.Context()
	var lz4 bool
	if err := pool.QueryRow(ctx, `SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'`).Scan(&lz4); err != nil {
		t.Fatal(err)
	}
	want := "p" // pglz, the default, is left when the server lacks lz4
	if lz4 {
		want = "l"
	}
	for _, col := range []struct{ table, column string }{
		{"runs", "input"}, {"runs", "output"}, {"step_states", "output"}, {"step_tasks", "item"}, {"step_tasks", "output"},
	} {
		var got string
		err := pool.QueryRow(ctx, `SELECT coalesce(nullif(attcompression, ''), 'p') FROM pg_attribute
			WHERE attrelid = ('pgflow.' || $1)::regclass AND attname = $2`, col.table, col.column).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("pgflow.%s.%s compression %q, want %q", col.table, col.column, got, want)
		}
	}
}

// functionsFingerprint summarises the pgflow schema's functions: each with
// its security, settings, privileges and body.
func functionsFingerprint(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	attrs := functionAttributes(t, pool, true)
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(attrs)) {
		fmt.Fprintf(&b, "%s %s\n", name, attrs[name])
	}
	return b.String()
}

// TestUpgradeFromVersion2: a database an older binary migrated to version 2
// upgrades to the same schema a new database gets, and a role granted what
// a worker needs before the upgrade may call the worker function added
// since (complete_and_claim) without being granted again.
func TestUpgradeFromVersion2(t *testing.T) {
	t.Parallel()
	worker := newLoginRole(t, "upgraded_worker")
	fresh, old := emptyPool(t), emptyPool(t)
	ctx := t.Context()
	if _, err := schema.Migrate(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if v, err := schema.MigrateTo(ctx, old, 2); err != nil || v != 2 {
		t.Fatalf("migrate to version 2: %d, %v", v, err)
	}
	if _, err := old.Exec(ctx, "SELECT pgflow.grant_worker($1)", worker.name); err != nil {
		t.Fatal(err)
	}
	if v, err := schema.Migrate(ctx, old); err != nil || v != schema.LatestVersion() {
		t.Fatalf("upgrade: %d, %v", v, err)
	}
	if _, err := fresh.Exec(ctx, "SELECT pgflow.grant_worker($1)", worker.name); err != nil {
		t.Fatal(err)
	}
	if got, want := schemaFingerprint(t, old), schemaFingerprint(t, fresh); got != want {
		t.Errorf("upgraded objects differ from a new database's:\n%s\n%s", got, want)
	}
	if got, want := functionsFingerprint(t, old), functionsFingerprint(t, fresh); got != want {
		t.Errorf("upgraded functions differ from a new database's:\n%s\n\n%s", got, want)
	}
	const cac = "pgflow.complete_and_claim(uuid[], text[], int[], int[], jsonb[], uuid, text[], text[], int, boolean[], interval, bigint)"
	var granted, public bool
	if err := old.QueryRow(ctx, "SELECT has_function_privilege($1, $2, 'EXECUTE'), has_function_privilege('public', $2, 'EXECUTE')",
		worker.name, cac).Scan(&granted, &public); err != nil {
		t.Fatal(err)
	}
	if !granted || public {
		t.Errorf("after the upgrade: the worker role may call complete_and_claim: %v; PUBLIC may: %v", granted, public)
	}
}

// functionAttributes maps each function of the pgflow schema to its
// security, settings and privileges, and with body the md5 of its body.
func functionAttributes(t *testing.T, pool *pgxpool.Pool, body bool) map[string]string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `
		SELECT p.oid::regprocedure::text,
		       p.prosecdef::text || ' ' || coalesce(array_to_string(p.proconfig, ';'), '') || ' ' || coalesce(p.proacl::text, '')
		       || CASE WHEN $1 THEN ' ' || md5(p.prosrc) ELSE '' END
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'pgflow'`, body)
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string]string{}
	for rows.Next() {
		var name, a string
		if err := rows.Scan(&name, &a); err != nil {
			t.Fatal(err)
		}
		attrs[name] = a
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return attrs
}

// TestUpgradesKeepFunctionAttributes: a function that a later version
// replaces keeps its security, settings and privileges. CREATE OR REPLACE
// keeps only the privileges, so a migration replacing a function must
// restate the rest. (Version 2 sets them for version 1's functions, so the
// upgrades checked start at version 2.)
func TestUpgradesKeepFunctionAttributes(t *testing.T) {
	t.Parallel()
	for from := 2; from < schema.LatestVersion(); from++ {
		t.Run(fmt.Sprintf("from version %d", from), func(t *testing.T) {
			t.Parallel()
			pool := emptyPool(t)
			if v, err := schema.MigrateTo(t.Context(), pool, from); err != nil || v != from {
				t.Fatalf("migrate to version %d: %d, %v", from, v, err)
			}
			before := functionAttributes(t, pool, false)
			if _, err := schema.Migrate(t.Context(), pool); err != nil {
				t.Fatal(err)
			}
			after := functionAttributes(t, pool, false)
			for name, want := range before {
				if got, ok := after[name]; !ok {
					t.Errorf("%s: gone after the upgrade", name)
				} else if got != want {
					t.Errorf("%s: security, settings and privileges %q after the upgrade, %q before", name, got, want)
				}
			}
		})
	}
}
