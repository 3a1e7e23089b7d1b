package sdk

import (
	"context"
	"encoding/json"
	"fmt"
)

// Task is one claimed task as a handler sees it: which run, step and
// element it is, and its raw input.
type Task struct {
	RunID   RunID
	Flow    string
	Step    string
	Index   int // the element's index in a fanout; 0 for a single step
	Attempt int // 1 on the first attempt

	runInput json.RawMessage
	deps     json.RawMessage
	item     json.RawMessage
}

// RunInput is the run's input as JSON (nil unless the handler was
// registered with HandlerOptions.RunInput).
func (t *Task) RunInput() json.RawMessage { return t.runInput }

// Deps is a JSON object with the outputs of a single step's dependencies,
// keyed by their slugs (nil for a step without dependencies and for a
// fanout task).
func (t *Task) Deps() json.RawMessage { return t.deps }

// Item is a fanout task's own element of the array it maps over.
func (t *Task) Item() json.RawMessage { return t.item }

// DecodeRunInput decodes the run input into v.
func (t *Task) DecodeRunInput(v any) error { return t.decode("run input", t.runInput, v) }

// DecodeDeps decodes the dependencies' outputs into v, typically a struct
// with one field per dependency tagged with its slug.
func (t *Task) DecodeDeps(v any) error { return t.decode("dependency outputs", t.deps, v) }

// DecodeItem decodes a fanout task's element into v.
func (t *Task) DecodeItem(v any) error { return t.decode("element", t.item, v) }

// decode reports a payload that does not fit the handler's type as a
// permanent error: retrying cannot fix it.
func (t *Task) decode(what string, data json.RawMessage, v any) error {
	if data == nil {
		data = json.RawMessage("null")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return Permanent(fmt.Errorf("decode the %s of step %q (task %d) of flow %q into %T: %w", what, t.Step, t.Index, t.Flow, v, err))
	}
	return nil
}

type taskContextKey struct{}

// TaskFromContext returns the task a handler's context belongs to: its run,
// step, element index and attempt (for logging, or for keying side effects
// so that a retried attempt can recognise its own earlier work).
func TaskFromContext(ctx context.Context) (*Task, bool) {
	t, ok := ctx.Value(taskContextKey{}).(*Task)
	return t, ok
}

// Handler runs one task and returns its output, which is encoded as JSON.
// Returning an error fails the attempt (retried per the step's options, or
// at once for Permanent errors); a panic fails it too.
type Handler func(ctx context.Context, task *Task) (any, error)

// HandlerOptions say what a handler needs from each claimed task.
type HandlerOptions struct {
	// RunInput sends the run input with every task. Off by default: the
	// handlers of a fanout over a large input would each receive it whole.
	RunInput bool
}

// HandleStep registers fn for the single step named step of flow f. fn
// receives the run input and the outputs of the step's dependencies decoded
// into Deps: a struct with one field per dependency, tagged with its slug,
// e.g. struct{ Prepare []Site `json:"prepare"` } (struct{} for none).
func HandleStep[In, FlowOut, Deps, Out any](w *Worker, f *Flow[In, FlowOut], step string,
	fn func(ctx context.Context, in In, deps Deps) (Out, error)) {
	spec := f.Spec()
	if s, ok := spec.Step(step); ok && s.Fanout {
		w.addError(fmt.Errorf("pgflow: HandleStep(%q, %q): the step is a fanout; use HandleFanout", spec.Slug, step))
		return
	}
	w.Handle(spec, step, HandlerOptions{RunInput: true}, func(ctx context.Context, t *Task) (any, error) {
		var in In
		if err := t.DecodeRunInput(&in); err != nil {
			return nil, err
		}
		var deps Deps
		if t.deps != nil {
			if err := t.DecodeDeps(&deps); err != nil {
				return nil, err
			}
		}
		return fn(ctx, in, deps)
	})
}

// HandleFanout registers fn for the fanout step named step of flow f: it
// runs once per element of the array the step maps over, decoded into Item.
func HandleFanout[In, FlowOut, Item, Out any](w *Worker, f *Flow[In, FlowOut], step string,
	fn func(ctx context.Context, item Item) (Out, error)) {
	spec := f.Spec()
	if s, ok := spec.Step(step); ok && !s.Fanout {
		w.addError(fmt.Errorf("pgflow: HandleFanout(%q, %q): the step is not a fanout; use HandleStep", spec.Slug, step))
		return
	}
	w.Handle(spec, step, HandlerOptions{}, func(ctx context.Context, t *Task) (any, error) {
		var item Item
		if err := t.DecodeItem(&item); err != nil {
			return nil, err
		}
		return fn(ctx, item)
	})
}
