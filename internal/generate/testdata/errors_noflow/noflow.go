// Package noflow declares a step but no flow.
package noflow

import "context"

//pgflow:step lonely
func Lonely(ctx context.Context) error { return nil }
