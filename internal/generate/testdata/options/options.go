// Package options sets options on the flow and on steps, in every unit.
package options

import "context"

// In is the flow's input.
//
//pgflow:flow tuned maxAttempts=7 baseDelay=1500ms timeout=1h30m
type In struct{}

// Defaults inherits everything from the flow.
//
//pgflow:step defaults
func Defaults(ctx context.Context) (int, error) { return 0, nil }

// Override overrides every option.
//
//pgflow:step override deps=defaults maxAttempts=1 baseDelay=250us timeout=45s startDelay=2m
func Override(ctx context.Context, n int) (int, error) { return n, nil }

// ZeroDelay sets startDelay=0s, which is the same as not setting it.
//
//pgflow:step zero_delay deps=defaults startDelay=0s baseDelay=2h
func ZeroDelay(ctx context.Context, n int) (int, error) { return n, nil }
