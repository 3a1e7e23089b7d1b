package schema_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestClaimUsesTheQueueIndex checks, with auto_explain, that the statements
// inside claim_tasks reach tasks through the partial indexes and never scan
// the task table, which here holds mostly completed tasks.
func TestClaimUsesTheQueueIndex(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	e.flow("plans", "", step{slug: "each", fanout: true})
	e.exec(`SELECT pgflow.start_flows('plans', array_fill((SELECT jsonb_agg(g) FROM generate_series(1, 2000) g), ARRAY[5]))`)
	e.exec(`UPDATE pgflow.step_tasks SET status = 'completed', output = '1'`)
	e.start("plans", `[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]`)
	e.exec(`VACUUM ANALYZE pgflow.step_tasks`)

	var mu sync.Mutex
	var plans []string
	cfg, err := pgx.ParseConfig(e.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		defer mu.Unlock()
		plans = append(plans, n.Message)
	}
	conn, err := pgx.ConnectConfig(e.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, s := range []string{
		"LOAD 'auto_explain'",
		"SET auto_explain.log_min_duration = 0",
		"SET auto_explain.log_nested_statements = on",
		"SET auto_explain.log_level = notice",
	} {
		if _, err := conn.Exec(e.ctx, s); err != nil {
			t.Skipf("auto_explain unavailable: %v", err)
		}
	}
	// Several calls, so that PL/pgSQL's plan cache may switch to generic plans.
	for range 8 {
		if got := claimOn(t, e.ctx, conn, 1, "plans.each"); len(got) != 1 {
			t.Fatalf("claimed %d", len(got))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var sawQueueIndex bool
	for _, p := range plans {
		if strings.Contains(p, "Seq Scan on step_tasks") {
			t.Errorf("a claim statement scans the task table:\n%s", p)
		}
		sawQueueIndex = sawQueueIndex || strings.Contains(p, "step_tasks_queued_idx")
	}
	if !sawQueueIndex {
		t.Errorf("no claim plan used step_tasks_queued_idx; plans:\n%s", strings.Join(plans, "\n"))
	}
}
