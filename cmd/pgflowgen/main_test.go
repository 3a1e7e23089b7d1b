package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgflow-go/pgflow/internal/testmodule"
)

const validSrc = `package sites

import "context"

// In is the flow's input.
//
//pgflow:flow sites
type In struct {
	URLs []string ` + "`json:\"urls\"`" + `
}

//pgflow:step split
func Split(ctx context.Context, in In) ([]string, error) { return in.URLs, nil }

//pgflow:step fetch deps=split fanout
func Fetch(ctx context.Context, url string) (int, error) { return len(url), nil }
`

const invalidSrc = `package broken

import "context"

//pgflow:flow broken
type In struct{}

//pgflow:step a deps=b
func A(ctx context.Context, x int) (int, error) { return 0, nil }

//pgflow:step c fanout
func C(ctx context.Context, x int) (int, error) { return 0, nil }
`

// pgflowgen runs the command in dir and returns its exit code and output.
func pgflowgen(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), dir, testmodule.Env(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestGenerateCheckAndRerun(t *testing.T) {
	t.Parallel()
	dir := testmodule.New(t, "github.com/example/sites", map[string][]byte{"sites.go": []byte(validSrc)})
	goFile, sqlFile := filepath.Join(dir, "pgflow_gen.go"), filepath.Join(dir, "pgflow_gen.sql")

	if code, _, stderr := pgflowgen(t, dir, "-check"); code != 1 || !strings.Contains(stderr, "pgflow_gen.go: missing") {
		t.Errorf("-check before generating: exit %d, stderr %q; want 1 naming the missing file", code, stderr)
	}
	if code, _, stderr := pgflowgen(t, dir); code != 0 || stderr != "" {
		t.Fatalf("first run: exit %d, stderr %q", code, stderr)
	}
	first := readFile(t, goFile) + readFile(t, sqlFile)
	if code, _, stderr := pgflowgen(t, dir); code != 0 || stderr != "" {
		t.Fatalf("second run: exit %d, stderr %q", code, stderr)
	}
	if second := readFile(t, goFile) + readFile(t, sqlFile); second != first {
		t.Error("the second run changed the generated files")
	}
	if code, _, stderr := pgflowgen(t, dir, "-check", "./..."); code != 0 || stderr != "" {
		t.Errorf("-check on fresh files: exit %d, stderr %q", code, stderr)
	}
	if out, err := testmodule.Go(dir, "vet", "./..."); err != nil {
		t.Errorf("go vet: %v\n%s", err, out)
	}

	// A stale file: -check names it and changes nothing.
	stale := strings.Replace(first[:len(readFile(t, goFile))], "Fanout: true", "Fanout: false", 1)
	if err := os.WriteFile(goFile, []byte(stale), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(sqlFile); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := pgflowgen(t, dir, "-check")
	if code != 1 || !strings.Contains(stderr, "pgflow_gen.go: out of date") || !strings.Contains(stderr, "pgflow_gen.sql: missing") {
		t.Errorf("-check on stale files: exit %d, stderr %q; want 1 naming both files", code, stderr)
	}
	if readFile(t, goFile) != stale {
		t.Error("-check wrote the Go file")
	}
	if code, _, stderr := pgflowgen(t, dir); code != 0 || stderr != "" {
		t.Fatalf("regenerating: exit %d, stderr %q", code, stderr)
	}
	if got := readFile(t, goFile) + readFile(t, sqlFile); got != first {
		t.Error("regenerating did not restore the files")
	}
}

func TestErrorsWriteNothing(t *testing.T) {
	t.Parallel()
	dir := testmodule.New(t, "github.com/example/mixed", map[string][]byte{
		"sites/sites.go":   []byte(validSrc),
		"broken/broken.go": []byte(invalidSrc),
	})
	code, stdout, stderr := pgflowgen(t, dir, "./...")
	want := `broken/broken.go:8:22: step "a" depends on unknown step "b" of flow "broken"
broken/broken.go:11:17: step "c" fans out over the flow input, which has type In, not a slice
`
	if code != 1 || stderr != want || stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant exit 1, stderr:\n%s", code, stdout, stderr, want)
	}
	for _, name := range []string{"sites/pgflow_gen.go", "sites/pgflow_gen.sql", "broken/pgflow_gen.go"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s was written despite errors (%v)", name, err)
		}
	}
	// Errors are reported under -check too, with the same exit code.
	if code, _, stderr := pgflowgen(t, dir, "-check", "./..."); code != 1 || stderr != want {
		t.Errorf("-check: exit %d, stderr:\n%s", code, stderr)
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	dir := testmodule.New(t, "github.com/example/sites", map[string][]byte{"sites.go": []byte(validSrc)})
	tests := []struct {
		name     string
		args     []string
		code     int
		inStderr string
	}{
		{"unknown flag", []string{"-frobnicate"}, 2, "flag provided but not defined: -frobnicate"},
		{"help", []string{"-h"}, 0, "usage: pgflowgen [-check] [packages]"},
		{"missing directory", []string{"./nowhere"}, 2, "nowhere"},
		{"bad pattern", []string{"example.com/no/such/module"}, 2, "example.com/no/such/module"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := pgflowgen(t, dir, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.inStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tt.code, tt.inStderr)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "pgflow_gen.go")); !os.IsNotExist(err) {
		t.Errorf("a failed run wrote files (%v)", err)
	}
}
