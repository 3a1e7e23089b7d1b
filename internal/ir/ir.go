// Package ir is the intermediate form between the generator's analysis and
// its emission: the flows of one Go package, checked and solved, with the Go
// types of their inputs, outputs and handler parameters.
//
// The analysis builds it from the //pgflow: annotations and the package's
// type information; the emitters read only this form. Every value in it is
// valid: a package with mistakes never reaches emission.
package ir

import (
	"go/token"
	"go/types"
	"time"
)

// Package is everything generated for one Go package.
type Package struct {
	Path  string         // import path
	Name  string         // package name
	Dir   string         // directory holding the package's files
	Types *types.Package // the package, as type-checked without its generated files

	// Flows are the package's flows in source order.
	Flows []*Flow
	// Receivers are the distinct receiver types of method handlers, in the
	// source order of their first handler. Each becomes a parameter of the
	// generated Register function.
	Receivers []*Receiver
	// Declared holds the names the package's own files declare at package
	// scope, test files included. Generated package-level names never
	// collide with them; file-level names (imports) avoid them too.
	Declared map[string]bool
}

// Flow is one flow: its input type, options and steps.
type Flow struct {
	Slug  string
	Pos   token.Position // position of the flow's slug in its directive
	Input *types.TypeName
	// Options are the flow's effective options: defaults applied, every
	// field but StartDelay set.
	Options Options
	// Steps are in topological order (a step after its dependencies); ties
	// are broken by source order.
	Steps []*Step

	VarName    string // the generated typed handle, e.g. AnalyzeWebsites
	OutputName string // the generated output struct, e.g. AnalyzeWebsitesOutput
}

// Leaves returns the steps no other step depends on, in topological order:
// the fields of the run's output.
func (f *Flow) Leaves() []*Step {
	used := map[*Step]bool{}
	for _, s := range f.Steps {
		for _, d := range s.Deps {
			used[d] = true
		}
	}
	var leaves []*Step
	for _, s := range f.Steps {
		if !used[s] {
			leaves = append(leaves, s)
		}
	}
	return leaves
}

// Options are retry and timing options. A zero field is unset: for a step,
// it inherits the flow's value.
type Options struct {
	MaxAttempts int
	BaseDelay   time.Duration
	Timeout     time.Duration
	StartDelay  time.Duration // steps only
}

// Step is one step of a flow.
type Step struct {
	Slug string
	Pos  token.Position // position of the step's slug in its directive
	// Deps are the steps this one depends on, in the order of deps=, which
	// is the order of the handler's dependency parameters.
	Deps   []*Step
	Fanout bool
	// Options are those the step's directive sets; the others are zero.
	Options Options
	Handler *Handler
	// Output is the handler's result type, or nil when the handler returns
	// only an error (its output is then JSON null). See Produced for the
	// step's output as a whole.
	Output types.Type
	// Field is the Go field name of the step's output wherever a struct
	// holds it: in the run's output struct and in the dependency structs
	// of the steps that depend on it. Unique within the flow.
	Field string
}

// Produced is the type of the step's output as its dependents and the run
// output see it: the handler's result type, struct{} when the handler
// returns only an error, and for a fanout step the slice of those.
func (s *Step) Produced() types.Type {
	t := s.Output
	if t == nil {
		t = types.NewStruct(nil, nil)
	}
	if s.Fanout {
		return types.NewSlice(t)
	}
	return t
}

// Handler is the function or method that runs a step.
type Handler struct {
	Name string    // the function's or method's name
	Recv *Receiver // the receiver type of a method; nil for a function
	// Sig is the handler's signature: ctx, then the run input when RunParam
	// is set, then one parameter per dependency (or the item, for a fanout).
	Sig *types.Signature
	// RunParam reports whether the handler takes the run input right after ctx.
	RunParam bool
}

// Run returns the type of the handler's run input parameter, or nil.
func (h *Handler) Run() types.Type {
	if !h.RunParam {
		return nil
	}
	return h.Sig.Params().At(1).Type()
}

// Inputs returns the types of the parameters after ctx and the run input:
// one per dependency for a single step, the item for a fanout step.
func (h *Handler) Inputs() []types.Type {
	first := 1
	if h.RunParam {
		first = 2
	}
	var out []types.Type
	for i := first; i < h.Sig.Params().Len(); i++ {
		out = append(out, h.Sig.Params().At(i).Type())
	}
	return out
}

// ErrorOnly reports whether the handler returns only an error.
func (h *Handler) ErrorOnly() bool { return h.Sig.Results().Len() == 1 }

// Receiver is the receiver type of one or more method handlers.
type Receiver struct {
	// Type is the named type the methods are declared on (T for both
	// func (T) M and func (*T) M).
	Type *types.TypeName
}
