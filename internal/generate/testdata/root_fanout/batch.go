// Package batch maps a step over the flow input itself.
package batch

import "context"

// Item is one element of the input.
type Item struct {
	N int `json:"n"`
}

// Batch is the flow's input: a slice, because the first step fans out over it.
//
//pgflow:flow square_all
type Batch []Item

// Square runs once per element of the input.
//
//pgflow:step square fanout
func Square(ctx context.Context, it Item) (int, error) {
	return it.N * it.N, nil
}

// Total adds the squares; it also takes the run input.
//
//pgflow:step total deps=square
func Total(ctx context.Context, in Batch, squares []int) (int, error) {
	sum := 0
	for _, s := range squares {
		sum += s
	}
	return sum, nil
}
