// Package durations has durations finer than Postgres intervals hold.
package durations

import "context"

// In is the flow's input.
//
//pgflow:flow fine baseDelay=1500ns timeout=1us
type In struct{}

//pgflow:step s startDelay=10ns timeout=1.5us
func S(ctx context.Context) error { return nil }
