// Package flows declares two flows; steps name theirs with flow=, and one
// Register registers them all, flows in source order.
package flows

import "context"

// SignupInput starts the signup flow.
//
//pgflow:flow signup maxAttempts=2
type SignupInput struct {
	Email string `json:"email"`
}

// ReportInput starts the report flow.
//
//pgflow:flow daily_report timeout=1h
type ReportInput struct {
	Day string `json:"day"`
}

// CreateUser belongs to signup.
//
//pgflow:step create_user flow=signup
func CreateUser(ctx context.Context, in SignupInput) (int64, error) { return 1, nil }

// Gather belongs to daily_report.
//
//pgflow:step gather flow=daily_report
func Gather(ctx context.Context, in ReportInput) ([]string, error) { return []string{in.Day}, nil }

// Welcome belongs to signup.
//
//pgflow:step welcome flow=signup deps=create_user
func Welcome(ctx context.Context, userID int64) error { return nil }

// Render belongs to daily_report.
//
//pgflow:step render flow=daily_report deps=gather
func Render(ctx context.Context, lines []string) (string, error) { return "", nil }
