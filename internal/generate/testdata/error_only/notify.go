// Package notify has handlers that return only an error.
package notify

import "context"

// Event is the flow's input.
//
//pgflow:flow notify
type Event struct {
	To []string `json:"to"`
}

// Send returns only an error; its output is JSON null.
//
//pgflow:step send
func Send(ctx context.Context, e Event) error { return nil }

// Audit depends on an error-only step: its parameter is struct{}.
//
//pgflow:step audit deps=send
func Audit(ctx context.Context, _ struct{}) error { return nil }

// Split lists the recipients.
//
//pgflow:step split
func Split(ctx context.Context, e Event) ([]string, error) { return e.To, nil }

// Deliver is an error-only fanout: its output is a slice of nulls.
//
//pgflow:step deliver deps=split fanout
func Deliver(ctx context.Context, to string) error { return nil }
