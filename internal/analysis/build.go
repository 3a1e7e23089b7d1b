package analysis

import (
	"go/types"

	"github.com/pgflow-go/pgflow/annotations"
	"github.com/pgflow-go/pgflow/internal/ir"
)

// build turns the checked declarations into the intermediate form. It runs
// only when there are no mistakes.
func (a *analyzer) build() *ir.Package {
	out := &ir.Package{
		Path:     a.pkg.PkgPath,
		Name:     a.pkg.Name,
		Dir:      a.pkg.Dir,
		Types:    a.pkg.Types,
		Declared: map[string]bool{},
	}
	for name := range a.declared {
		out.Declared[name] = true
	}
	receivers := map[*types.TypeName]*ir.Receiver{}
	for _, s := range a.steps { // source order: receivers in order of first handler
		if s.recv != nil && receivers[s.recv] == nil {
			r := &ir.Receiver{Type: s.recv}
			receivers[s.recv] = r
			out.Receivers = append(out.Receivers, r)
		}
	}
	for _, f := range a.flows {
		opts := f.ann.Options.Resolve(annotations.Options{})
		flow := &ir.Flow{
			Slug:  f.ann.Slug,
			Pos:   relPos(a.wd, f.ann.SlugPos),
			Input: f.obj,
			Options: ir.Options{
				MaxAttempts: opts.MaxAttempts,
				BaseDelay:   opts.BaseDelay,
				Timeout:     opts.Timeout,
			},
			VarName:    f.names.varName,
			OutputName: f.names.outputName,
		}
		steps := map[*stepDecl]*ir.Step{}
		for _, s := range f.order {
			st := &ir.Step{
				Slug:    s.ann.Slug,
				Pos:     relPos(a.wd, s.ann.SlugPos),
				Fanout:  s.ann.Fanout,
				Options: stepOptions(s.ann.Options),
				Output:  s.output,
				Field:   f.names.fields[s],
				Handler: &ir.Handler{
					Name:     s.fn.Name(),
					Recv:     receivers[s.recv],
					Sig:      s.sig,
					RunParam: s.runParam,
				},
			}
			for _, d := range s.deps {
				st.Deps = append(st.Deps, steps[d])
			}
			steps[s] = st
			flow.Steps = append(flow.Steps, st)
		}
		out.Flows = append(out.Flows, flow)
	}
	return out
}

// stepOptions keeps the options a step sets. A zero startDelay is the
// same as none, and is left unset like the runtime does.
func stepOptions(o annotations.Options) ir.Options {
	var out ir.Options
	if o.MaxAttempts != nil {
		out.MaxAttempts = *o.MaxAttempts
	}
	if o.BaseDelay != nil {
		out.BaseDelay = *o.BaseDelay
	}
	if o.Timeout != nil {
		out.Timeout = *o.Timeout
	}
	if o.StartDelay != nil {
		out.StartDelay = *o.StartDelay
	}
	return out
}
