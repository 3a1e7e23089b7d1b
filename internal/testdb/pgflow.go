package testdb

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/schema"
)

// Migrated is a [TemplateFunc] that installs pgflow's schema, for
// WithTemplate(Migrated).
func Migrated(ctx context.Context, connString string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = schema.Migrate(ctx, conn)
	return err
}

// statusesSQL lists the rows of pgflow's runtime tables whose status is not
// one their table allows. The tables carry no CHECK constraints (they cost
// every statement that writes them), so the tests check instead.
const statusesSQL = `
SELECT 'runs ' || r.run_id || ': ' || r.status FROM pgflow.runs r
WHERE r.status NOT IN ('started', 'completed', 'failed', 'cancelled')
UNION ALL
SELECT 'step_states ' || s.run_id || '/' || s.step_slug || ': ' || s.status FROM pgflow.step_states s
WHERE s.status NOT IN ('created', 'started', 'completed', 'failed', 'cancelled')
UNION ALL
SELECT 'step_tasks ' || t.run_id || '/' || t.step_slug || '/' || t.task_index || ': ' || t.status FROM pgflow.step_tasks t
WHERE t.status NOT IN ('queued', 'started', 'completed', 'failed', 'cancelled')
LIMIT 20`

// CheckStatusesAtEnd makes the test fail, when it ends, if a row of
// pgflow's runtime tables in pool's database holds a status its table does
// not allow. Call it after NewPool: it runs before the pool closes.
func CheckStatusesAtEnd(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		bad, err := InvalidStatuses(ctx, pool)
		if err != nil {
			t.Errorf("testdb: checking statuses: %v", err)
		}
		for _, b := range bad {
			t.Errorf("testdb: invalid status in %s", b)
		}
	})
}

// InvalidStatuses describes up to 20 rows of pgflow's runtime tables whose
// status their table does not allow. A database without the pgflow schema
// has none.
func InvalidStatuses(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('pgflow.step_tasks') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return nil, err
	}
	rows, err := pool.Query(ctx, statusesSQL)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
