// Package signatures has handlers whose signatures do not fit their steps.
package signatures

import "context"

// In is the flow's input.
//
//pgflow:flow checks
type In struct {
	N int `json:"n"`
}

// NotSlice is not a slice.
type NotSlice struct{}

//pgflow:step root
func Root(ctx context.Context, in In) (NotSlice, error) { return NotSlice{}, nil }

// OverStruct fans out over a struct.
//
//pgflow:step over_struct deps=root fanout
func OverStruct(ctx context.Context, x NotSlice) (int, error) { return 0, nil }

//pgflow:step list
func List(ctx context.Context) ([]string, error) { return nil, nil }

// WrongItem takes an int where the element is a string.
//
//pgflow:step wrong_item deps=list fanout
func WrongItem(ctx context.Context, n int) (int, error) { return 0, nil }

// WrongDep's second dependency parameter has the wrong type.
//
//pgflow:step wrong_dep deps=list,root
func WrongDep(ctx context.Context, l []string, r string) (int, error) { return 0, nil }

// TooMany has a parameter too many.
//
//pgflow:step too_many deps=list
func TooMany(ctx context.Context, in In, l []string, extra int) (int, error) { return 0, nil }

// NoCtx does not start with a context.
//
//pgflow:step no_ctx deps=list
func NoCtx(l []string, ctx context.Context) (int, error) { return 0, nil }

//pgflow:step no_params
func NoParams() error { return nil }

// BadRun's run input has the wrong type.
//
//pgflow:step bad_run deps=list
func BadRun(ctx context.Context, in string, l []string) (int, error) { return 0, nil }

//pgflow:step bad_results
func BadResults(ctx context.Context) (int, string) { return 0, "" }

//pgflow:step no_results
func NoResults(ctx context.Context) {}

//pgflow:step variadic deps=list
func Variadic(ctx context.Context, l ...string) (int, error) { return 0, nil }

//pgflow:step generic
func Generic[T any](ctx context.Context) (T, error) {
	var zero T
	return zero, nil
}

// Box is generic.
type Box[T any] struct{}

//pgflow:step generic_recv
func (b *Box[T]) Get(ctx context.Context) (int, error) { return 0, nil }

// Sink depends on an error-only step with a parameter that is not struct{}.
//
//pgflow:step sink deps=no_params
func Sink(ctx context.Context, x int) error { return nil }

// OverNothing fans out over an error-only step.
//
//pgflow:step over_nothing deps=no_params fanout
func OverNothing(ctx context.Context, x struct{}) error { return nil }
