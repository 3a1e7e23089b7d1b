// Package data has types that cannot round-trip JSON.
package data

import (
	"context"
	"encoding/json"
	"time"
	"unsafe"
)

// In holds a channel.
//
//pgflow:flow data
type In struct {
	Done chan bool `json:"done"`
}

// WithFunc holds a function.
type WithFunc struct {
	F func()
}

// Deep hides a complex number deep inside.
type Deep struct {
	Items []*struct {
		C complex128
	}
}

// Key is a struct, not a valid JSON object key.
type Key struct{ X int }

// BadKey has a map with struct keys.
type BadKey struct {
	M map[Key]int
}

// Ptr holds an unsafe.Pointer.
type Ptr struct {
	P unsafe.Pointer
}

// Fine is fine: unexported and "-" fields are skipped, marshalers and
// interfaces are trusted, time.Time keys are text marshalers, and recursive
// types are followed once.
type Fine struct {
	ch    chan int
	Skip  chan int `json:"-"`
	Raw   json.RawMessage
	Any   any
	ByDay map[time.Time]int
	Next  *Fine
	Err   error
}

//pgflow:step f1
func F1(ctx context.Context) (WithFunc, error) { return WithFunc{}, nil }

//pgflow:step f2
func F2(ctx context.Context) (Deep, error) { return Deep{}, nil }

//pgflow:step f3
func F3(ctx context.Context) (BadKey, error) { return BadKey{}, nil }

//pgflow:step f4
func F4(ctx context.Context) (Ptr, error) { return Ptr{}, nil }

//pgflow:step f5
func F5(ctx context.Context) (Fine, error) { return Fine{}, nil }

//pgflow:step f6
func F6(ctx context.Context) (complex64, error) { return 0, nil }

//pgflow:step f7
func F7(ctx context.Context) (map[string][]chan int, error) { return nil, nil }
