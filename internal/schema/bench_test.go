package schema_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/schema"
	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

// Benchmarks run on a server of their own with default durability (fsync and
// synchronous_commit on), unlike the tests' fast server, so that the figures
// mean what they would in production:
//
//	go test -run '^$' -bench . -benchtime 3x ./internal/schema/

var durable struct {
	once sync.Once
	srv  *throwawaypg.Server
	err  error
}

// benchPool returns a pool on a fresh migrated database of the durable server.
func benchPool(b *testing.B) *pgxpool.Pool {
	b.Helper()
	durable.once.Do(func() {
		durable.srv, durable.err = throwawaypg.New(context.Background(), throwawaypg.Options{})
	})
	if durable.err != nil {
		b.Fatal(durable.err)
	}
	ctx := context.Background()
	name := fmt.Sprintf("bench_%d", time.Now().UnixNano())
	url, err := durable.srv.CreateDatabase(ctx, name)
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if _, err := schema.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	return pool
}

// itemsJSON is a JSON array of n objects of about 100 bytes.
func itemsJSON(n int) string {
	return fmt.Sprintf(`(SELECT jsonb_agg(jsonb_build_object('url', 'https://example.com/site/' || g, 'pad', repeat('x', 60))) FROM generate_series(1, %d) g)`, n)
}

// BenchmarkSpawnFanout measures starting a run whose root fanout has 100,000
// items: one set-based statement queues every task with its own element.
func BenchmarkSpawnFanout(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			pool := benchPool(b)
			ctx := context.Background()
			mustExec(b, pool, "SELECT pgflow.create_flow('spawn'); SELECT pgflow.add_step('spawn', 'each', step_type => 'fanout')")
			mustExec(b, pool, "CREATE TABLE bench_input AS SELECT "+itemsJSON(n)+" AS input")
			var total time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := pool.Exec(ctx, "SELECT pgflow.start_flow('spawn', (SELECT input FROM bench_input))"); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "tasks/s")
		})
	}
}

// BenchmarkDrainFanout measures claiming and completing a 10,000-item fanout
// from 4 connections, 100 tasks per claim and per completion.
func BenchmarkDrainFanout(b *testing.B) {
	const items, conns, batch = 10000, 4, 100
	pool := benchPool(b)
	ctx := context.Background()
	mustExec(b, pool, "SELECT pgflow.create_flow('drain'); SELECT pgflow.add_step('drain', 'each', step_type => 'fanout')")
	mustExec(b, pool, "CREATE TABLE bench_input AS SELECT "+itemsJSON(items)+" AS input")
	var total time.Duration
	for b.Loop() {
		var run string
		if err := pool.QueryRow(ctx, "SELECT pgflow.start_flow('drain', (SELECT input FROM bench_input))::text").Scan(&run); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, conns)
		for range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- drain(ctx, pool, batch)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		total += time.Since(start)
		var status string
		if err := pool.QueryRow(ctx, "SELECT status FROM pgflow.runs WHERE run_id = $1::uuid", run).Scan(&status); err != nil || status != "completed" {
			b.Fatalf("run %s: %s %v", run, status, err)
		}
	}
	b.ReportMetric(float64(items)*float64(b.N)/total.Seconds(), "tasks/s")
}

// drain claims and completes batches until nothing is left to claim.
func drain(ctx context.Context, pool *pgxpool.Pool, batch int) error {
	for {
		rows, err := pool.Query(ctx, `SELECT run_id, step_slug, task_index, attempt
			FROM pgflow.claim_tasks('00000000-0000-0000-0000-000000000002', '{drain}', '{each}', $1, '{false}')`, batch)
		if err != nil {
			return err
		}
		var runs [][16]byte
		var steps, outs []string
		var idx, att []int32
		var run [16]byte
		var step string
		var index, attempt int32
		_, err = pgx.ForEachRow(rows, []any{&run, &step, &index, &attempt}, func() error {
			runs, steps, idx, att = append(runs, run), append(steps, step), append(idx, index), append(att, attempt)
			outs = append(outs, `{"words": 42}`)
			return nil
		})
		if err != nil {
			return err
		}
		if len(runs) == 0 {
			return nil
		}
		if _, err := pool.Exec(ctx, "SELECT pgflow.complete_tasks($1::uuid[], $2, $3, $4, $5::jsonb[])", runs, steps, idx, att, outs); err != nil {
			return err
		}
	}
}

func mustExec(b *testing.B, pool *pgxpool.Pool, sql string) {
	b.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		b.Fatalf("%s: %v", sql, err)
	}
}
