// Package testmodule makes throwaway Go modules that depend on this
// repository, for tests that run the go command on generated code.
//
// A module made by [New] requires github.com/pgflow-go/pgflow, replaced by
// the repository's own directory, and every module the repository requires
// (with the repository's go.sum), so the go command resolves everything
// from the module cache: [Env] runs it offline.
package testmodule

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// Module is the path of this repository's module.
const Module = "github.com/pgflow-go/pgflow"

// RepoRoot returns the repository's root: the nearest directory above the
// working directory that holds a go.mod declaring [Module].
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(data) == Module {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", Module)
		}
		dir = parent
	}
}

var moduleLine = regexp.MustCompile(`(?m)^module\s+(\S+)`)

func modulePath(gomod []byte) string {
	m := moduleLine.FindSubmatch(gomod)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// requireBlocks returns the require directives of a go.mod.
var requireBlocks = regexp.MustCompile(`(?ms)^require\s*\(.*?^\)\s*$|^require\s+[^(\n][^\n]*$`)

// moduleGraph loads the repository's whole module graph once per process.
var moduleGraph = sync.OnceValue(func() error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "list", "-m", "all")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go list -m all: %w\n%s", err, out)
	}
	return nil
})

// New writes a module named modPath into a new temporary directory of t,
// with files (slash-separated paths relative to the module root, mapped to
// their contents), and returns its directory.
//
// The go command run offline in such a module may need the go.mod of every
// module in the repository's module graph, not only of those a build
// downloads (resolving a package outside the build list does): New loads
// the graph once, in the repository with the test's own environment, so
// that the module cache holds it.
func New(t testing.TB, modPath string, files map[string][]byte) string {
	t.Helper()
	if err := moduleGraph(); err != nil {
		t.Fatalf("loading the module graph of %s into the module cache: %v", Module, err)
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "module %s\n\ngo 1.26.0\n\nrequire %s v0.0.0-00010101000000-000000000000\n\n", modPath, Module)
	for _, req := range requireBlocks.FindAll(gomod, -1) {
		b.Write(req)
		b.WriteString("\n\n")
	}
	fmt.Fprintf(&b, "replace %s => %s\n", Module, root)

	dir := t.TempDir()
	files["go.mod"] = []byte(b.String())
	files["go.sum"] = gosum
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Env is the environment for the go command in a module made by New: the
// test's own, offline, resolving modules from the module cache only.
func Env() []string {
	return append(os.Environ(),
		"GOFLAGS=-mod=mod -buildvcs=false",
		"GOPROXY=off",
		"GOSUMDB=off",
		"GOWORK=off",
	)
}

// Go runs the go command with args in dir with Env, and returns its
// combined output.
func Go(dir string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = Env()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// ReadTree reads the files under dir, skipping the directories for which
// skip returns true, as New takes them: slash-separated relative paths
// mapped to contents.
func ReadTree(dir string, skip func(rel string) bool) (map[string][]byte, error) {
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && skip != nil && skip(rel) {
				return filepath.SkipDir
			}
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files[rel] = data
		return nil
	})
	return files, err
}
