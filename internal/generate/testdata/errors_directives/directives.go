// Package directives has mistakes in its directives, all reported at once
// and sorted by position.
package directives

import "context"

// Order is an input with a misspelt option.
//
//pgflow:flow orders maxAtempts=3
type Order struct{}

// Order2 declares the same flow again.
//
//pgflow:flow orders
type Order2 struct{}

// A is fine.
//
//pgflow:step a
func A(ctx context.Context, o Order) (int, error) { return 0, nil }

// A2 declares step a again.
//
//pgflow:step a
func A2(ctx context.Context) (int, error) { return 0, nil }

// B depends on a step that does not exist.
//
//pgflow:step b deps=a,c
func B(ctx context.Context, x int, y int) (int, error) { return 0, nil }

// D is a fanout with two dependencies.
//
//pgflow:step d deps=a,b fanout
func D(ctx context.Context, x int) (int, error) { return 0, nil }

// E names a flow that does not exist.
//
//pgflow:step e flow=ordres
func E(ctx context.Context) error { return nil }

// F is not a step: a space after the slashes makes it documentation.
//
// pgflow:step f deps=a
func F(ctx context.Context, x int) error { return nil }
