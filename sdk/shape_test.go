package sdk_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgflow-go/pgflow/sdk"
)

func shapeSpec() sdk.FlowSpec {
	return sdk.FlowSpec{
		Slug: "shapes", MaxAttempts: 4, Timeout: time.Minute,
		Steps: []sdk.StepSpec{
			{Slug: "fetch"},
			{Slug: "each", Deps: []string{"fetch"}, Fanout: true, Timeout: 10 * time.Second},
			{Slug: "sum", Deps: []string{"each"}},
		},
	}
}

// storedOptions summarises the stored options of the shapes flow.
func storedOptions(t *testing.T, e *env) string {
	t.Helper()
	var s string
	err := e.pool.QueryRow(e.ctx, `
		SELECT string_agg(format('%s:%s/%s/%s', step_slug, max_attempts, base_delay, timeout), ' ' ORDER BY step_index)
		FROM pgflow.step_options WHERE flow_slug = 'shapes'`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEnsureFlows(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if err := sdk.EnsureFlows(e.ctx, e.pool, shapeSpec()); err != nil {
		t.Fatal(err)
	}
	const want = "fetch:4/00:00:01/00:01:00 each:4/00:00:01/00:00:10 sum:4/00:00:01/00:01:00"
	if got := storedOptions(t, e); got != want {
		t.Fatalf("stored options %q, want %q", got, want)
	}

	t.Run("same shape is a no-op", func(t *testing.T) {
		if err := sdk.EnsureFlows(e.ctx, e.pool, shapeSpec()); err != nil {
			t.Fatal(err)
		}
		if got := storedOptions(t, e); got != want {
			t.Fatalf("options changed to %q", got)
		}
	})

	t.Run("changed options are applied", func(t *testing.T) {
		spec := shapeSpec()
		spec.MaxAttempts = 6
		spec.Steps[1].Timeout = 0 // back to the flow's
		spec.Steps[2].BaseDelay = 3 * time.Second
		if err := sdk.EnsureFlows(e.ctx, e.pool, spec); err != nil {
			t.Fatal(err)
		}
		const changed = "fetch:6/00:00:01/00:01:00 each:6/00:00:01/00:01:00 sum:6/00:00:03/00:01:00"
		if got := storedOptions(t, e); got != changed {
			t.Fatalf("stored options %q, want %q", got, changed)
		}
	})

	t.Run("a changed shape lists every difference", func(t *testing.T) {
		spec := shapeSpec()
		spec.Steps[1].Fanout = false
		spec.Steps[2].Deps = []string{"each", "fetch"}
		spec.Steps = append(spec.Steps, sdk.StepSpec{Slug: "report", Deps: []string{"sum"}})
		err := sdk.EnsureFlows(e.ctx, e.pool, spec)
		var shapeErr *sdk.ShapeError
		if !errors.As(err, &shapeErr) || !errors.Is(err, sdk.ErrShapeChanged) {
			t.Fatalf("got %v, want a *ShapeError", err)
		}
		for _, want := range []string{
			`step "each" is a fanout in the database and a single step in the code`,
			`step "sum" depends on each in the database and on each, fetch in the code`,
			`step "report" is new`,
			`"shapes_v2"`,
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q:\n%v", want, err)
			}
		}
		removed := shapeSpec()
		removed.Steps = removed.Steps[:2]
		if err := sdk.EnsureFlows(e.ctx, e.pool, removed); err == nil || !strings.Contains(err.Error(), `step "sum" is in the database but not in the code`) {
			t.Errorf("removing a step: %v", err)
		}
	})

	t.Run("invalid specs are refused with every problem", func(t *testing.T) {
		err := sdk.EnsureFlows(e.ctx, e.pool, sdk.FlowSpec{Slug: "Bad Slug", Steps: []sdk.StepSpec{
			{Slug: "a", Deps: []string{"b"}},
			{Slug: "b"},
			{Slug: "c", Deps: []string{"a", "b"}, Fanout: true},
		}})
		if err == nil {
			t.Fatal("no error")
		}
		for _, want := range []string{"invalid flow slug", `depends on "b", which comes later`, "fanout steps must have exactly one dependency"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q:\n%v", want, err)
			}
		}
	})
}

func TestEnsureFlowsConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = sdk.EnsureFlows(e.ctx, e.pool, shapeSpec()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("sync %d: %v", i, err)
		}
	}
	var steps int
	if err := e.pool.QueryRow(e.ctx, "SELECT count(*) FROM pgflow.steps WHERE flow_slug = 'shapes'").Scan(&steps); err != nil || steps != 3 {
		t.Fatalf("%d steps stored (%v)", steps, err)
	}
}

func TestWorkersSyncConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for range 4 {
		e.startWorker(sdk.WorkerOptions{}, registerLinear)
	}
	run := startRun(e, linearFlow, linearIn{N: 1})
	if out, err := run.Wait(e.waitCtx(30 * time.Second)); err != nil || out.Describe != "sum 3" {
		t.Fatalf("%+v, %v", out, err)
	}
}

func TestWorkerRefusesAChangedShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if err := sdk.EnsureFlows(e.ctx, e.pool, shapeSpec()); err != nil {
		t.Fatal(err)
	}
	changed := shapeSpec()
	changed.Steps = changed.Steps[:1]
	w := sdk.NewWorker(e.pool, sdk.WorkerOptions{Logger: testLogger()})
	w.Handle(changed, "fetch", sdk.HandlerOptions{}, func(ctx context.Context, t *sdk.Task) (any, error) { return nil, nil })
	if err := w.Run(e.ctx); !errors.Is(err, sdk.ErrShapeChanged) {
		t.Fatalf("Run: %v, want ErrShapeChanged", err)
	}
}
