package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/pgflow-go/pgflow/sdk"
)

// The benchmark's flows, with no-op handlers: they measure the engine, not
// the work.
var (
	// runsFlow is one single step: each run is one task.
	runsFlow = sdk.FlowSpec{Slug: "bench_runs", Steps: []sdk.StepSpec{{Slug: "noop"}}}
	// fanoutFlow maps over its input: one task per element.
	fanoutFlow = sdk.FlowSpec{Slug: "bench_fanout", Steps: []sdk.StepSpec{{Slug: "each", Fanout: true}}}
	// chainFlow is three single steps in a row.
	chainFlow = sdk.FlowSpec{Slug: "bench_chain", Steps: []sdk.StepSpec{
		{Slug: "first"}, {Slug: "second", Deps: []string{"first"}}, {Slug: "third", Deps: []string{"second"}},
	}}
	allFlows = []sdk.FlowSpec{runsFlow, fanoutFlow, chainFlow}
)

// output is what every no-op handler returns.
var output = json.RawMessage(`{"words":42}`)

// Register registers no-op handlers for every benchmark flow.
func Register(w *sdk.Worker) {
	noop := func(ctx context.Context, t *sdk.Task) (any, error) { return output, nil }
	for _, f := range allFlows {
		for _, s := range f.Steps {
			w.Handle(f, s.Slug, sdk.HandlerOptions{}, noop)
		}
	}
}

// fanoutInput is a JSON array of n objects of about 100 bytes.
func fanoutInput(n int) json.RawMessage {
	var b strings.Builder
	b.Grow(n * 100)
	b.WriteByte('[')
	pad := strings.Repeat("x", 48)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"url":"https://example.com/site/%07d","pad":"%s"}`, i, pad)
	}
	b.WriteByte(']')
	return json.RawMessage(b.String())
}
