// Package flows declares several flows: steps must name theirs, and every
// flow needs steps.
package flows

import "context"

// FirstIn is a flow's input.
//
//pgflow:flow first
type FirstIn struct{}

// SecondIn is a flow's input.
//
//pgflow:flow second
type SecondIn struct{}

// EmptyIn is the input of a flow without steps.
//
//pgflow:flow empty
type EmptyIn struct{}

//pgflow:step s1 flow=first
func S1(ctx context.Context) error { return nil }

// S2 does not say which flow it belongs to.
//
//pgflow:step s2
func S2(ctx context.Context) error { return nil }

//pgflow:step s3 flow=second
func S3(ctx context.Context) error { return nil }

//pgflow:step s4 flow=third
func S4(ctx context.Context) error { return nil }
