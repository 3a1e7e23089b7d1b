// Package types uses types of every kind in handler signatures: other
// packages' (including one whose import path ends in a major version),
// generic instantiations, aliases, anonymous structs with tags, maps,
// pointers, arrays, interfaces and JSON marshalers.
package types

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/golden/types/geo"
)

// Query is the flow's input.
//
//pgflow:flow typed
type Query struct {
	Table pgx.Identifier `json:"table"`
	Since time.Time      `json:"since"`
}

// Points is an alias: the generated code spells it as written.
type Points = []geo.Point

// Nested embeds a struct and keeps a recursive pointer.
type Nested struct {
	geo.Point
	Parent *Nested `json:"parent,omitempty"`
	hidden chan int
}

// Locate returns another package's generic type.
//
//pgflow:step locate
func Locate(ctx context.Context, q Query) (geo.Page[geo.Point], error) {
	return geo.Page[geo.Point]{}, nil
}

// Flatten takes it back and returns an alias.
//
//pgflow:step flatten deps=locate
func Flatten(ctx context.Context, page geo.Page[geo.Point]) (Points, error) { return page.Items, nil }

// Describe fans out over the alias of a slice.
//
//pgflow:step describe deps=flatten fanout
func Describe(ctx context.Context, p geo.Point) (struct {
	Label string `json:"label" yaml:"label"`
	Raw   json.RawMessage
}, error) {
	return struct {
		Label string `json:"label" yaml:"label"`
		Raw   json.RawMessage
	}{}, nil
}

// Index returns maps, arrays, pointers and interfaces.
//
//pgflow:step index deps=locate
func Index(ctx context.Context, page geo.Page[geo.Point]) (map[string]*[2]any, error) {
	return nil, nil
}

// Tree returns a recursive type.
//
//pgflow:step tree
func Tree(ctx context.Context) (*Nested, error) { return nil, nil }

// Stamp returns a type with its own JSON methods and an odd tag.
//
//pgflow:step stamp
func Stamp(ctx context.Context) (struct {
	At time.Time `db:"at"  json:"at"`
}, error) {
	return struct {
		At time.Time `db:"at"  json:"at"`
	}{}, nil
}

// Table returns a type of a package whose import path ends in a major
// version: the generated code imports it under its package name, pgx.
//
//pgflow:step table
func Table(ctx context.Context, q Query) (pgx.Identifier, error) { return q.Table, nil }
