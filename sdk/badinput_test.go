package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgflow-go/pgflow/internal/testdb"
	"github.com/pgflow-go/pgflow/sdk"
)

// oneStep is a flow of one step whose handler returns whatever the test says.
func oneStep(slug string) *sdk.Flow[json.RawMessage, map[string]json.RawMessage] {
	return sdk.NewFlow[json.RawMessage, map[string]json.RawMessage](sdk.FlowSpec{
		Slug: slug, MaxAttempts: 3, BaseDelay: time.Millisecond, Steps: []sdk.StepSpec{{Slug: "out"}},
	})
}

type cyclic struct {
	Next *cyclic `json:"next"`
}

func TestBadHandlerOutputs(t *testing.T) {
	t.Parallel()
	loop := &cyclic{}
	loop.Next = loop
	tests := []struct {
		name   string
		output any
		want   string // in the run's error
	}{
		{"NaN", math.NaN(), "encode the output of step \"out\" (task 0) as JSON: json: unsupported value: NaN"},
		{"+Inf", map[string]float64{"x": math.Inf(1)}, "json: unsupported value: +Inf"},
		{"cycle", loop, "json: unsupported value: encountered a cycle"},
		{"NUL in a string", map[string]string{"text": "a\x00b"}, `holds the character \u0000, which Postgres cannot store in jsonb`},
		{"over the size limit", strings.Repeat("x", 2000), "is 2002 bytes of JSON, over the limit of 1000 (WorkerOptions.MaxOutputBytes)"},
	}
	e := newEnv(t)
	var mu sync.Mutex
	outputs := map[string]any{}
	attempts := map[string]int{}
	for i, tc := range tests {
		flow := oneStep("bad_output_" + string(rune('a'+i)))
		outputs[flow.Slug()] = tc.output
		e.startWorker(sdk.WorkerOptions{MaxOutputBytes: 1000}, func(w *sdk.Worker) {
			w.Handle(flow.Spec(), "out", sdk.HandlerOptions{}, func(ctx context.Context, task *sdk.Task) (any, error) {
				mu.Lock()
				defer mu.Unlock()
				attempts[task.Flow]++
				return outputs[task.Flow], nil
			})
		})
		t.Run(tc.name, func(t *testing.T) {
			run := startRun(e, flow, json.RawMessage(`{}`))
			_, err := run.Wait(e.waitCtx(30 * time.Second))
			var runErr *sdk.RunError
			if !errors.As(err, &runErr) || runErr.Step != "out" || !strings.Contains(runErr.Message, tc.want) {
				t.Fatalf("got %v, want a run error at step out saying %q", err, tc.want)
			}
			mu.Lock()
			defer mu.Unlock()
			if attempts[flow.Slug()] != 1 {
				t.Errorf("%d attempts: an output that cannot be stored must not be retried", attempts[flow.Slug()])
			}
		})
	}
}

func TestInvalidUTF8OutputIsReplaced(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flow := oneStep("utf8_output")
	e.startWorker(sdk.WorkerOptions{}, func(w *sdk.Worker) {
		w.Handle(flow.Spec(), "out", sdk.HandlerOptions{}, func(ctx context.Context, task *sdk.Task) (any, error) {
			return "ok \xff\xfe end", nil
		})
	})
	out := runToEnd(e, flow, json.RawMessage(`{}`), 30*time.Second)
	// encoding/json replaces invalid UTF-8 with U+FFFD, as documented.
	if string(out["out"]) != `"ok \ufffd\ufffd end"` && string(out["out"]) != "\"ok \uFFFD\uFFFD end\"" {
		t.Fatalf("output %s", out["out"])
	}
}

func TestBadStartInputs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if err := e.client.EnsureFlows(e.ctx, linearFlow.Spec(), oneStep("inputs").Spec()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		flow  string
		input string
		is    error
		want  string
	}{
		{"unknown flow", "no_such_flow", `{}`, sdk.ErrNotFound, `flow "no_such_flow" does not exist`},
		{"slug with a quote", `x'; DROP TABLE pgflow.runs; --`, `{}`, sdk.ErrNotFound, "invalid flow slug"},
		{"slug with spaces", "two words", `{}`, sdk.ErrNotFound, "invalid flow slug"},
		{"slug of 200 characters", strings.Repeat("a", 200), `{}`, sdk.ErrNotFound, "invalid flow slug"},
		{"not JSON", "inputs", `{"a": `, sdk.ErrInvalidInput, "input 0: not valid JSON"},
		{"invalid UTF-8", "inputs", "{\"a\": \"\xff\"}", sdk.ErrInvalidInput, "input 0: not valid UTF-8"},
		{"NUL character", "inputs", `{"a": "x\u0000y"}`, sdk.ErrInvalidInput, `holds the character \u0000`},
		{"NUL in a key", "inputs", `{"a\u0000": 1}`, sdk.ErrInvalidInput, `holds the character \u0000`},
	}
	var before int
	if err := e.pool.QueryRow(e.ctx, "SELECT count(*) FROM pgflow.runs").Scan(&before); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.StartFlow(e.ctx, tc.flow, json.RawMessage(tc.input))
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %v saying %q", err, tc.is, tc.want)
			}
		})
	}
	var after int
	if err := e.pool.QueryRow(e.ctx, "SELECT count(*) FROM pgflow.runs").Scan(&after); err != nil || after != before {
		t.Fatalf("runs went from %d to %d (%v)", before, after, err)
	}
	// An escaped backslash followed by u0000 is ordinary text, not a NUL.
	if _, err := e.client.StartFlow(e.ctx, "inputs", json.RawMessage(`{"a": "\\u0000"}`)); err != nil {
		t.Fatalf("a literal backslash-u0000: %v", err)
	}
}

func TestInputThatDoesNotDecode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startWorker(sdk.WorkerOptions{}, registerLinear)
	if err := e.client.EnsureFlows(e.ctx, linearFlow.Spec()); err != nil {
		t.Fatal(err)
	}
	id, err := e.client.StartFlow(e.ctx, "linear", json.RawMessage(`{"n": "seven"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.client.WaitRun(e.waitCtx(30*time.Second), id)
	var runErr *sdk.RunError
	if !errors.As(err, &runErr) || runErr.Step != "double" {
		t.Fatalf("got %v", err)
	}
	for _, want := range []string{`decode the run input of step "double" (task 0) of flow "linear"`, "cannot unmarshal string", "linearIn"} {
		if !strings.Contains(runErr.Message, want) {
			t.Errorf("message %q does not say %q", runErr.Message, want)
		}
	}
}

func TestUnreachableDatabase(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pgxpool.New(ctx, "postgres://user@host:notaport/db"); err == nil {
		t.Error("a malformed URL was accepted")
	}
	// Port 1 on the loopback: connections are refused at once.
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	client := sdk.NewClient(pool, sdk.WithClientLogger(testLogger()))
	defer client.Close()
	if _, err := client.StartFlow(ctx, "linear", json.RawMessage(`{}`)); err == nil || !strings.Contains(err.Error(), "connect") {
		t.Errorf("start against a closed port: %v", err)
	}

	// A worker keeps retrying, says why, and returns when its context ends.
	var logs testdb.Buffer
	w := sdk.NewWorker(pool, sdk.WorkerOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	registerLinear(w)
	runCtx, stop := context.WithTimeout(ctx, time.Second)
	defer stop()
	if err := w.Run(runCtx); err != nil {
		t.Errorf("Run: %v", err)
	}
	if !strings.Contains(logs.String(), "worker cannot reach the database; retrying") || !strings.Contains(logs.String(), "127.0.0.1") {
		t.Errorf("the worker did not say why it waits:\n%s", logs.String())
	}
}

func TestSchemaChecks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.pool.Exec(e.ctx, "INSERT INTO pgflow.schema_migrations (version, name) VALUES (999, 'future')"); err != nil {
		t.Fatal(err)
	}
	if err := sdk.Migrate(e.ctx, e.pool); !errors.Is(err, sdk.ErrSchemaTooNew) || !strings.Contains(err.Error(), "version 999") {
		t.Fatalf("Migrate: %v", err)
	}
	w := sdk.NewWorker(e.pool, sdk.WorkerOptions{Logger: testLogger()})
	registerLinear(w)
	if err := w.Run(e.ctx); !errors.Is(err, sdk.ErrSchemaTooNew) {
		t.Fatalf("Run on a newer schema: %v", err)
	}

	// A database an older pgflow migrated: the worker asks for Migrate
	// instead of failing at its first report.
	if _, err := e.pool.Exec(e.ctx, "DELETE FROM pgflow.schema_migrations WHERE version >= $1", sdk.SchemaVersion()); err != nil {
		t.Fatal(err)
	}
	w = sdk.NewWorker(e.pool, sdk.WorkerOptions{Logger: testLogger()})
	registerLinear(w)
	if err := w.Run(e.ctx); !errors.Is(err, sdk.ErrSchemaOutdated) || !strings.Contains(err.Error(), fmt.Sprintf("version %d", sdk.SchemaVersion()-1)) {
		t.Fatalf("Run on an older schema: %v", err)
	}

	if _, err := e.pool.Exec(e.ctx, "DROP SCHEMA pgflow CASCADE"); err != nil {
		t.Fatal(err)
	}
	w = sdk.NewWorker(e.pool, sdk.WorkerOptions{Logger: testLogger()})
	registerLinear(w)
	if err := w.Run(e.ctx); !errors.Is(err, sdk.ErrSchemaMissing) {
		t.Fatalf("Run without the schema: %v", err)
	}
	if _, err := e.client.StartFlow(e.ctx, "linear", json.RawMessage(`{}`)); !errors.Is(err, sdk.ErrSchemaMissing) {
		t.Fatalf("start without the schema: %v", err)
	}
}
