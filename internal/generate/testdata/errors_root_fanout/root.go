// Package root fans out over flow inputs that do not fit.
package root

import "context"

// In is not a slice.
//
//pgflow:flow over_struct
type In struct{}

// Names is a slice of strings.
//
//pgflow:flow over_names
type Names []string

//pgflow:step each flow=over_struct fanout
func Each(ctx context.Context, x In) error { return nil }

// Upper takes the wrong element type.
//
//pgflow:step upper flow=over_names fanout
func Upper(ctx context.Context, b []byte) error { return nil }
