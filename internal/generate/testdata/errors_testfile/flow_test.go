package testfile

import "context"

// Fake is in a test file: not a handler the generated code can call.
//
//pgflow:step fake deps=real
func Fake(ctx context.Context, _ struct{}) error { return nil }

// TestedOutput is declared by a test file, like a generated name.
var TestedOutput = 1
