package sdk

import (
	"context"
	"encoding/json"
	"fmt"
)

// Flow is a typed handle on a flow whose input is In and whose output
// (an object with one field per leaf step) is Out. Generated code declares
// one per annotated flow; hand-written code builds one with NewFlow.
type Flow[In, Out any] struct {
	spec FlowSpec
}

// NewFlow returns a typed handle on the flow spec describes. The spec is
// checked when a worker syncs it (see FlowSpec.Validate).
func NewFlow[In, Out any](spec FlowSpec) *Flow[In, Out] {
	return &Flow[In, Out]{spec: spec}
}

// Slug is the flow's slug.
func (f *Flow[In, Out]) Slug() string { return f.spec.Slug }

// Spec returns the flow's shape and options.
func (f *Flow[In, Out]) Spec() FlowSpec { return cloneSpec(f.spec) }

// Start starts a run with the given input.
func (f *Flow[In, Out]) Start(ctx context.Context, c *Client, in In) (*Run[Out], error) {
	return f.StartTx(ctx, c, c.pool, in)
}

// StartTx starts a run inside the caller's transaction: the run exists
// (and its tasks become claimable) only if that transaction commits. The
// first start of a flow through a client makes sure the flow exists (as a
// worker would, see EnsureFlows), outside that transaction.
func (f *Flow[In, Out]) StartTx(ctx context.Context, c *Client, q Querier, in In) (*Run[Out], error) {
	if err := c.ensureFlow(ctx, f.spec); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("pgflow: start %q: encode input: %v: %w", f.spec.Slug, err, ErrInvalidInput)
	}
	id, err := c.StartFlowTx(ctx, q, f.spec.Slug, raw)
	if err != nil {
		return nil, err
	}
	return f.Run(c, id), nil
}

// Run returns a handle on an existing run of this flow.
func (f *Flow[In, Out]) Run(c *Client, id RunID) *Run[Out] {
	return &Run[Out]{id: id, flow: f.spec.Slug, client: c}
}

// Run is a typed handle on one run.
type Run[Out any] struct {
	id     RunID
	flow   string
	client *Client
}

// ID is the run's id.
func (r *Run[Out]) ID() RunID { return r.id }

// Wait waits until the run ends and returns its typed output. A run that
// failed or was cancelled gives a *RunError naming the failed step, the
// task index and the message (errors.Is ErrRunFailed / ErrRunCancelled).
func (r *Run[Out]) Wait(ctx context.Context) (Out, error) {
	var out Out
	raw, err := r.client.WaitRun(ctx, r.id)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return out, fmt.Errorf("pgflow: run %s of flow %q: decode output into %T: %w", r.id, r.flow, out, err)
	}
	return out, nil
}

// Get reads the run with its step states.
func (r *Run[Out]) Get(ctx context.Context) (*RunInfo, error) { return r.client.GetRun(ctx, r.id) }

// Cancel cancels the run; it reports whether the run was still started.
func (r *Run[Out]) Cancel(ctx context.Context) (bool, error) { return r.client.CancelRun(ctx, r.id) }

func cloneSpec(s FlowSpec) FlowSpec {
	steps := make([]StepSpec, len(s.Steps))
	for i, st := range s.Steps {
		st.Deps = append([]string(nil), st.Deps...)
		steps[i] = st
	}
	s.Steps = steps
	return s
}
