// Package typecheck does not type-check: the type checker's error is
// reported, but not those about the names pgflowgen generates.
package typecheck

import (
	"context"

	"github.com/pgflow-go/pgflow/sdk"
)

// In is the flow's input.
//
//pgflow:flow checked
type In struct{}

//pgflow:step s
func S(ctx context.Context) (Missing, error) { return nil, nil }

// Use uses the generated names.
func Use(w *sdk.Worker) CheckedOutput {
	Register(w)
	_ = Checked.Spec()
	return CheckedOutput{}
}
