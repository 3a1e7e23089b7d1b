// Package naming derives Go names from slugs: initialisms, and steps whose
// CamelCase names would collide.
package naming

import "context"

// Input is the flow's input.
//
//pgflow:flow user_id_sync
type Input struct{}

// A is step a_b.
//
//pgflow:step a_b
func A(ctx context.Context) (int, error) { return 0, nil }

// B is step a__b, whose CamelCase name is that of a_b.
//
//pgflow:step a__b
func B(ctx context.Context) (string, error) { return "", nil }

// C takes both.
//
//pgflow:step http_url deps=a_b,a__b
func C(ctx context.Context, x int, y string) (bool, error) { return false, nil }
