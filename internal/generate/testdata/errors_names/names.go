// Package names declares names the generated code needs.
package names

import "context"

// In is an input.
//
//pgflow:flow analyze_websites
type In struct{}

// AnalyzeWebsitesOutput is already declared by the package.
type AnalyzeWebsitesOutput struct{}

// Register is already declared by the package.
func Register() {}

// A1In is an input.
//
//pgflow:flow a_1
type A1In struct{}

// A1bIn is the input of a flow whose Go name is that of a_1.
//
//pgflow:flow a1
type A1bIn struct{}

//pgflow:step s flow=analyze_websites
func S(ctx context.Context) error { return nil }

//pgflow:step s flow=a_1
func S1(ctx context.Context) error { return nil }

//pgflow:step s flow=a1
func S2(ctx context.Context) error { return nil }
