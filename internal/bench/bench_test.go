package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/pgflow-go/pgflow/internal/testdb"
)

// workerEnv makes the test binary the benchmark's worker process: the
// benchmark starts its worker as a command of its own.
const workerEnv = "PGFLOW_BENCH_TEST_WORKER"

func TestMain(m *testing.M) {
	if slots := os.Getenv(workerEnv); slots != "" {
		n, err := strconv.Atoi(slots)
		if err == nil {
			err = RunWorker(os.Getenv("DATABASE_URL"), WorkerConfig{Concurrency: n})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchmark worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(testdb.Main(m))
}

// TestEveryScenarioReports runs the whole benchmark at small sizes on a new
// database: each scenario reports what it measures, in the table and as one
// JSON line with the fields every line carries.
func TestEveryScenarioReports(t *testing.T) {
	var log bytes.Buffer
	results, err := Run(t.Context(), Config{
		DatabaseURL: testdb.NewDatabaseFrom(t, ""),
		Scenarios:   []string{"runs", "fanout", "chain-latency", "rss"},
		Runs:        300,
		Widths:      []int{10, 200},
		Chains:      5,
		RSSWidth:    100,
		Worker:      WorkerConfig{Concurrency: 50},
		WorkerCommand: func(databaseURL string, wc WorkerConfig) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), workerEnv+"="+strconv.Itoa(wc.Concurrency), "DATABASE_URL="+databaseURL)
			return cmd
		},
		Log: &log,
	})
	if err != nil {
		t.Fatalf("Run: %v\nlog:\n%s", err, log.String())
	}

	type want struct {
		scenario             string
		n                    int
		spawn, latency, cost bool
	}
	wants := []want{
		{scenario: "runs", n: 300},
		{scenario: "fanout", n: 10, spawn: true},
		{scenario: "fanout", n: 200, spawn: true, cost: true},
		{scenario: "chain-latency", n: 5, latency: true},
		{scenario: "rss", n: 100},
	}
	if len(results) != len(wants) {
		t.Fatalf("%d results, want %d: %+v", len(results), len(wants), results)
	}
	for i, w := range wants {
		r := results[i]
		if r.Scenario != w.scenario || r.N != w.n || r.Seconds <= 0 || r.PerSecond <= 0 {
			t.Errorf("result %d: %s n=%d %.3fs %.0f/s, want %s n=%d with a time and a rate", i, r.Scenario, r.N, r.Seconds, r.PerSecond, w.scenario, w.n)
		}
		if (r.SpawnSeconds != nil) != w.spawn || (r.P50ms != nil && r.P99ms != nil) != w.latency || (r.CostRatio != nil) != w.cost {
			t.Errorf("result %d (%s): spawn %v, p50/p99 %v/%v, cost ratio %v", i, r.Scenario, r.SpawnSeconds, r.P50ms, r.P99ms, r.CostRatio)
		}
		// Every scenario but the chain runs a worker of its own and reports its memory.
		if (r.RSSMB != nil && *r.RSSMB > 0) != (w.scenario != "chain-latency") {
			t.Errorf("result %d (%s): worker RSS %v", i, r.Scenario, r.RSSMB)
		}
	}

	var table bytes.Buffer
	WriteTable(&table, results)
	if lines := strings.Split(strings.TrimSpace(table.String()), "\n"); len(lines) != len(results)+1 || !strings.Contains(lines[0], "per second") {
		t.Errorf("table: want a header and a line per result:\n%s", table.String())
	}
	var jsonLines bytes.Buffer
	if err := WriteJSON(&jsonLines, results); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(jsonLines.String()), "\n")
	if len(lines) != len(results) {
		t.Fatalf("%d JSON lines for %d results", len(lines), len(results))
	}
	for _, line := range lines {
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Fatalf("JSON line %s: %v", line, err)
		}
		for _, f := range []string{"scenario", "n", "seconds", "per_second", "p50_ms", "p99_ms", "rss_mb"} {
			if _, ok := fields[f]; !ok {
				t.Errorf("JSON line %s lacks %q", line, f)
			}
		}
	}
}
