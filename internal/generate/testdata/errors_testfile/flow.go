// Package testfile declares a step in a test file.
package testfile

import "context"

// In is the flow's input.
//
//pgflow:flow tested
type In struct{}

//pgflow:step real
func Real(ctx context.Context) error { return nil }
