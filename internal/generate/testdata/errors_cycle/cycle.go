// Package cycle has two dependency cycles; each is named.
package cycle

import "context"

// In is the flow's input.
//
//pgflow:flow loops
type In struct{}

// Start is outside the cycles.
//
//pgflow:step start
func Start(ctx context.Context) (int, error) { return 0, nil }

//pgflow:step a deps=start,c
func A(ctx context.Context, s, c int) (int, error) { return 0, nil }

//pgflow:step b deps=a
func B(ctx context.Context, a int) (int, error) { return 0, nil }

//pgflow:step c deps=b
func C(ctx context.Context, b int) (int, error) { return 0, nil }

//pgflow:step d deps=e
func D(ctx context.Context, e int) (int, error) { return 0, nil }

//pgflow:step e deps=d
func E(ctx context.Context, d int) (int, error) { return 0, nil }
