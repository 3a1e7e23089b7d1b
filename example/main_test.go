package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/example/sites"
	"github.com/pgflow-go/pgflow/internal/testdb"
)

func TestMain(m *testing.M) {
	os.Exit(testdb.Main(m, testdb.WithTemplate(testdb.Migrated)))
}

// expected computes the summary by calling the handlers directly, without
// the engine.
func expected(t *testing.T, n int) sites.Summary {
	t.Helper()
	ctx := context.Background()
	list, err := sites.PrepareURLs(ctx, sites.SitesInput{URLs: sites.URLs(n)})
	if err != nil {
		t.Fatal(err)
	}
	var a sites.Analyzer
	var results []sites.Analysis
	for _, s := range list {
		r, err := a.AnalyzeSite(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	sum, err := sites.Summarize(ctx, results)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func TestDemoEndToEnd(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := testdb.NewPool(t)
	var out bytes.Buffer
	got, err := demo(ctx, pool, demoOptions{Sites: 25, FailEvery: 5, Out: &out, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	want := expected(t, 25)
	if got.Sites != 25 || got.TotalWords != want.TotalWords || got.Largest != want.Largest {
		t.Fatalf("summary %+v, want %+v", got, want)
	}
	if got.TotalWords != 3471 || got.Largest != "https://site014.example/" {
		t.Fatalf("summary %+v: the demo's numbers changed", got)
	}
	// About one site in five fails its first attempt and is retried.
	if got.Retried == 0 || got.Retried >= 25 {
		t.Fatalf("retried %d sites, want some but not all", got.Retried)
	}
	if !strings.Contains(out.String(), "progress: 27/27 tasks") {
		t.Fatalf("progress never reached the end:\n%s", out.String())
	}
}

func TestCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := testdb.NewDatabase(t)
	t.Setenv("DATABASE_URL", url)

	workerCtx, stopWorker := context.WithCancel(ctx)
	workerDone := make(chan int, 1)
	go func() { workerDone <- run(workerCtx, []string{"worker", "-delay", "0s"}, io.Discard, io.Discard) }()
	defer func() {
		stopWorker()
		if code := <-workerDone; code != 0 {
			t.Errorf("worker exited %d", code)
		}
	}()

	var out, errOut bytes.Buffer
	if code := run(ctx, []string{"start", "-n", "4", "-wait"}, &out, &errOut); code != 0 {
		t.Fatalf("start exited %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "summary: 4 sites,") {
		t.Fatalf("start printed:\n%s", out.String())
	}
	id := lines[0]

	out.Reset()
	if code := run(ctx, []string{"status", id}, &out, &errOut); code != 0 {
		t.Fatalf("status exited %d: %s", code, errOut.String())
	}
	for _, want := range []string{"run " + id + " of flow analyze_websites: completed", "analyze_site", "4/4 tasks completed", "output:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}

	// A pool of the same database shows the run too.
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pgflow.runs WHERE status = 'completed'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d completed runs (%v)", n, err)
	}

	for _, args := range [][]string{{"frobnicate"}, {"status"}, {"status", "not-a-uuid"}, {"start", "-bogus"}} {
		errOut.Reset()
		if code := run(ctx, args, io.Discard, &errOut); code != 2 {
			t.Errorf("%v exited %d, want 2 (%s)", args, code, errOut.String())
		}
	}
}
