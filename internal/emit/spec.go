package emit

import (
	"github.com/pgflow-go/pgflow/internal/ir"
	"github.com/pgflow-go/pgflow/sdk"
)

// Spec returns the runtime spec of f: what the generated Go code declares
// and what the generated SQL creates. The flow's options are all set; a
// step's options are set only where the step's directive sets them, so the
// step inherits the others from its flow.
func Spec(f *ir.Flow) sdk.FlowSpec {
	spec := sdk.FlowSpec{
		Slug:        f.Slug,
		MaxAttempts: f.Options.MaxAttempts,
		BaseDelay:   f.Options.BaseDelay,
		Timeout:     f.Options.Timeout,
	}
	for _, s := range f.Steps {
		st := sdk.StepSpec{
			Slug:        s.Slug,
			Fanout:      s.Fanout,
			MaxAttempts: s.Options.MaxAttempts,
			BaseDelay:   s.Options.BaseDelay,
			Timeout:     s.Options.Timeout,
			StartDelay:  s.Options.StartDelay,
		}
		for _, d := range s.Deps {
			st.Deps = append(st.Deps, d.Slug)
		}
		spec.Steps = append(spec.Steps, st)
	}
	return spec
}

// Specs returns the specs of pkg's flows, in source order.
func Specs(pkg *ir.Package) []sdk.FlowSpec {
	specs := make([]sdk.FlowSpec, len(pkg.Flows))
	for i, f := range pkg.Flows {
		specs[i] = Spec(f)
	}
	return specs
}
