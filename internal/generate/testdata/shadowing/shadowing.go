// Package shadowing declares names the generated code would otherwise use:
// generated locals and imports get other names rather than shadow them.
package shadowing

import "context"

// In is the flow's input.
//
//pgflow:flow shadow
type In struct{}

// item is a type named like a generated local.
type item struct {
	V int `json:"v"`
}

// w, sdk and time are package-level names like Register's parameter and
// the generated file's imports.
var (
	w    = 1
	sdk  = "s"
	time = 2
)

// run is a handler named like a generated local.
//
//pgflow:step make
func run(ctx context.Context, in In) ([]item, error) { return nil, nil }

// each fans out with a parameter of type item.
//
//pgflow:step each deps=make fanout
func each(ctx context.Context, in In, it item) (item, error) { return it, nil }

// shadow is unexported, named like the flow's spec variable.
var shadow = 0

// Keep the unexported names used.
var _, _, _, _ = w, sdk, time, shadow
