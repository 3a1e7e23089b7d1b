package generate_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pgflow-go/pgflow/internal/generate"
	"github.com/pgflow-go/pgflow/internal/testmodule"
)

var update = flag.Bool("update", false, "rewrite the want files of the golden cases in testdata")

// goldenModule is the module path the golden cases live under: case c is
// the package (tree) goldenModule/c.
const goldenModule = "github.com/example/golden"

// TestGolden runs the generator on each case of testdata/<case>/ and
// compares its output with testdata/<case>/want/: pgflow_gen.go and
// pgflow_gen.sql (under want/<dir>/ for a subpackage) for a valid case,
// errors.txt for a case with mistakes. The generated code of every valid
// case is then built and vetted.
//
// The cases are copied into one throwaway module that uses this
// repository; the generator runs in each case's directory, as go generate
// would, so paths in errors are relative to it.
func TestGolden(t *testing.T) {
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	var cases []string
	for _, e := range entries {
		if e.IsDir() {
			cases = append(cases, e.Name())
		}
	}
	files, err := testmodule.ReadTree("testdata", func(rel string) bool { return filepath.Base(rel) == "want" })
	if err != nil {
		t.Fatal(err)
	}
	mod := testmodule.New(t, goldenModule, files)
	if out, err := testmodule.Go(mod, "list", "-deps", "./..."); err != nil {
		t.Fatalf("preparing the module of the cases: %v\n%s", err, out)
	}

	var (
		mu    sync.Mutex
		valid []string
	)
	t.Run("cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c, func(t *testing.T) {
				t.Parallel()
				if runCase(t, c, filepath.Join(mod, c)) {
					mu.Lock()
					valid = append(valid, "./"+c+"/...")
					mu.Unlock()
				}
			})
		}
	})
	if t.Failed() || len(valid) == 0 {
		return
	}
	slices.Sort(valid)
	t.Run("build", func(t *testing.T) {
		for _, args := range [][]string{{"build"}, {"vet"}} {
			if out, err := testmodule.Go(mod, append(args, valid...)...); err != nil {
				t.Errorf("go %s of the generated code: %v\n%s", args[0], err, out)
			}
		}
	})
}

// runCase generates case c in dir, compares the output with the want
// files, writes the generated files into dir, and reports whether the case
// is valid.
func runCase(t *testing.T, c, dir string) bool {
	results, err := generate.Generate(context.Background(), generate.Options{Dir: dir, Env: testmodule.Env()}, "./...")
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join("testdata", c, "want")
	got := map[string][]byte{} // want/-relative path -> content
	if errs := generate.Errors(results); len(errs) > 0 {
		got["errors.txt"] = []byte(errs.Error() + "\n")
	} else {
		for _, r := range results {
			for _, f := range r.Files {
				if f.Content == nil {
					t.Errorf("unexpected removal of %s", f.Rel)
					continue
				}
				got[filepath.ToSlash(f.Rel)] = f.Content
			}
		}
	}
	if *update {
		if err := os.RemoveAll(want); err != nil {
			t.Fatal(err)
		}
		for rel, content := range got {
			path := filepath.Join(want, filepath.FromSlash(rel))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, content, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantFiles, err := testmodule.ReadTree(want, nil)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if diff := cmp.Diff(stringMap(wantFiles), stringMap(got)); diff != "" {
		t.Errorf("generated output differs from %s (-want +got; go test -update rewrites it):\n%s", want, diff)
	}
	if _, ok := got["errors.txt"]; ok {
		return false
	}
	if err := generate.Commit(results); err != nil {
		t.Fatal(err)
	}
	return true
}

func stringMap(m map[string][]byte) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}
