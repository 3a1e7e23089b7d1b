// Command pgflowgen generates the typed Go code and the SQL of the flows
// declared with //pgflow: annotations.
//
// Usage:
//
//	pgflowgen [-check] [packages]
//
// With no packages it works on the package in the current directory, so it
// runs from a go:generate line:
//
//	//go:generate go run github.com/pgflow-go/pgflow/cmd/pgflowgen
//
// Packages are go command patterns, such as ./... (directories named
// testdata are skipped by such patterns, as by the go command).
//
// For each package that declares flows it writes two files beside the
// package's own:
//
//   - pgflow_gen.go: for each flow a typed handle (AnalyzeWebsites.Start
//     starts a run whose Wait returns the typed output), compile-time
//     guards on the handlers' signatures, and Register, which registers
//     every handler on an sdk.Worker (with a parameter per receiver type
//     of method handlers);
//   - pgflow_gen.sql: a migration that defines the flows with
//     pgflow.create_flow and pgflow.add_step, for teams that apply SQL
//     with their own migration tool after pgflow's core schema.
//
// A package without directives gets no files, and files pgflowgen wrote
// there before are removed. Running pgflowgen twice changes nothing.
//
// The generated files carry the build constraint !pgflowgen, and pgflowgen
// loads packages with the tag pgflowgen, so a stale or broken generated
// file never stops the next run.
//
// Every mistake in the annotations or the handlers is reported at once, on
// standard error, as file:line:col: message with paths relative to the
// current directory; nothing is written when there is any.
//
// The flags are:
//
//	-check
//		Write nothing; report each generated file that is missing, out of
//		date or should be removed, and exit 1 if there is any.
//
// Exit codes: 0 success (or up to date under -check); 1 mistakes in the
// packages, or stale files under -check; 2 usage errors and failures: an
// unknown flag, a bad pattern, packages that cannot be loaded, files that
// cannot be read or written.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/pgflow-go/pgflow/internal/generate"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // mistakes in the packages, or stale files under -check
	exitUsage   = 2 // usage errors and failures to load, read or write
	programName = "pgflowgen"
)

func main() {
	os.Exit(run(context.Background(), "", nil, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole command: dir is the working directory ("" for the
// current one) and env the go command's environment (nil for os.Environ()).
func run(ctx context.Context, dir string, env, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet(programName, flag.ContinueOnError)
	flags.SetOutput(stderr)
	check := flags.Bool("check", false, "write nothing; exit 1 if a generated file is missing, out of date or should be removed")
	flags.Usage = func() {
		fmt.Fprintf(flags.Output(), "usage: %s [-check] [packages]\n\n", programName)
		fmt.Fprintf(flags.Output(), "Generates pgflow_gen.go and pgflow_gen.sql for the packages (default: the one in the\ncurrent directory) from their //pgflow:flow and //pgflow:step annotations.\n\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}

	results, err := generate.Generate(ctx, generate.Options{Dir: dir, Env: env}, flags.Args()...)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", programName, err)
		return exitUsage
	}
	if errs := generate.Errors(results); len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintln(stderr, e)
		}
		return exitFailed
	}
	if *check {
		stale, err := generate.Check(results)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", programName, err)
			return exitUsage
		}
		for _, s := range stale {
			fmt.Fprintf(stderr, "%s: %s (run %s)\n", s.File.Rel, s.Reason, programName)
		}
		if len(stale) > 0 {
			return exitFailed
		}
		return exitOK
	}
	if err := generate.Commit(results); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", programName, err)
		return exitUsage
	}
	return exitOK
}
