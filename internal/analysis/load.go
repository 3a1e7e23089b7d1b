// Package analysis loads Go packages with golang.org/x/tools/go/packages,
// reads their //pgflow: annotations, checks the flows they declare (shape
// and handler types) and solves them into the intermediate form of package
// ir, which the emitters read.
//
// Every mistake is collected, not only the first: [Load] returns them per
// package as an [annotations.ErrorList], each error positioned at the
// offending directive argument, parameter or declaration, with file names
// relative to the working directory.
//
// Packages are loaded with the build tag [BuildTag], and generated files are
// constrained to builds without it, so a stale or broken generated file
// never stops the next run from loading its package.
package analysis

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/tools/go/packages"

	"github.com/pgflow-go/pgflow/annotations"
	"github.com/pgflow-go/pgflow/internal/ir"
)

// BuildTag is the build tag set while loading packages. Generated files
// carry the constraint "//go:build !pgflowgen".
const BuildTag = "pgflowgen"

// Config says where and how to load packages.
type Config struct {
	// Dir is the working directory: patterns are resolved in it and error
	// positions are reported relative to it. Empty means the current one.
	Dir string
	// Env is the environment of the go command; nil means os.Environ().
	Env []string
}

// Result is the analysis of one package.
type Result struct {
	PkgPath string // import path
	Dir     string // absolute directory of the package's files
	// Package is the solved form of the package's flows. It is nil when
	// the package declares no flows or steps, or when Errors is not empty.
	Package *ir.Package
	// Errors are the package's mistakes, sorted by position.
	Errors annotations.ErrorList
}

// LoadError reports that packages could not be loaded at all: a bad
// pattern, a missing directory, a failing go command.
type LoadError struct {
	Msgs []string
}

// Error implements error.
func (e *LoadError) Error() string {
	return "loading packages: " + strings.Join(e.Msgs, "\n")
}

// Load loads the packages matching patterns ("." when there are none) and
// analyses each. Packages without any //pgflow: directive are not
// type-checked; their Result has a nil Package and no errors. The error is
// a *LoadError when patterns cannot be loaded; mistakes in the packages
// themselves are in the results.
func Load(ctx context.Context, cfg Config, patterns ...string) ([]*Result, error) {
	if len(patterns) == 0 {
		patterns = []string{"."}
	}
	wd := cfg.Dir
	if wd == "" {
		var err error
		if wd, err = os.Getwd(); err != nil {
			return nil, &LoadError{Msgs: []string{err.Error()}}
		}
	}
	wd, err := filepath.Abs(wd)
	if err != nil {
		return nil, &LoadError{Msgs: []string{err.Error()}}
	}
	buildFlags := []string{"-tags=" + BuildTag}

	// First pass: names and files only, to find the packages that have
	// directives at all.
	listed, err := packages.Load(&packages.Config{
		Context:    ctx,
		Mode:       packages.NeedName | packages.NeedFiles,
		Dir:        wd,
		Env:        cfg.Env,
		BuildFlags: buildFlags,
	}, patterns...)
	if err != nil {
		return nil, &LoadError{Msgs: []string{err.Error()}}
	}
	var (
		results    []*Result
		candidates []string
		byPath     = map[string]*Result{}
		failures   []string
	)
	for _, p := range listed {
		if len(p.GoFiles)+len(p.IgnoredFiles)+len(p.OtherFiles) == 0 && len(p.Errors) > 0 {
			for _, e := range p.Errors {
				failures = append(failures, e.Error())
			}
			continue
		}
		dir := p.Dir
		if dir == "" && len(p.GoFiles) > 0 {
			dir = filepath.Dir(p.GoFiles[0])
		}
		r := &Result{PkgPath: p.PkgPath, Dir: dir}
		results = append(results, r)
		byPath[p.PkgPath] = r
		if hasDirectives(p.GoFiles) || hasDirectives(testFiles(dir)) {
			candidates = append(candidates, p.PkgPath)
		}
	}
	if len(failures) > 0 {
		return nil, &LoadError{Msgs: failures}
	}
	if len(candidates) == 0 {
		return results, nil
	}

	// Second pass: syntax and types of the packages with directives.
	pkgs, err := packages.Load(&packages.Config{
		Context: ctx,
		Mode: packages.NeedName | packages.NeedFiles | packages.NeedCompiledGoFiles |
			packages.NeedSyntax | packages.NeedTypes | packages.NeedTypesInfo,
		Dir:        wd,
		Env:        cfg.Env,
		BuildFlags: buildFlags,
	}, candidates...)
	if err != nil {
		return nil, &LoadError{Msgs: []string{err.Error()}}
	}
	for _, p := range pkgs {
		r := byPath[p.PkgPath]
		if r == nil {
			continue
		}
		if p.Types == nil || p.TypesInfo == nil {
			for _, e := range p.Errors {
				failures = append(failures, e.Error())
			}
			if len(p.Errors) == 0 {
				failures = append(failures, fmt.Sprintf("package %s: no type information", p.PkgPath))
			}
			continue
		}
		tests := parseTestFiles(p.Fset, r.Dir)
		r.Package, r.Errors = analyze(wd, p, tests)
	}
	if len(failures) > 0 {
		return nil, &LoadError{Msgs: failures}
	}
	return results, nil
}

// directiveRE finds text that may be a directive or a near miss; files
// without it have nothing for the annotations parser.
var directiveRE = regexp.MustCompile(`(?i)pgflow:[a-z]`)

// hasDirectives reports whether any of files may hold a //pgflow: comment.
func hasDirectives(files []string) bool {
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err == nil && directiveRE.Match(src) {
			return true
		}
	}
	return false
}

// testFiles lists the _test.go files of dir.
func testFiles(dir string) []string {
	if dir == "" {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	slices.Sort(files)
	return files
}

// parseTestFiles parses the test files of dir that may hold directives or
// declare names (all of them); those that do not parse are left out: the
// go command reports them.
func parseTestFiles(fset *token.FileSet, dir string) []*ast.File {
	var out []*ast.File
	for _, name := range testFiles(dir) {
		src, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		f, err := parser.ParseFile(fset, name, src, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			continue
		}
		out = append(out, f)
	}
	return out
}

// relPath makes file names relative to the working directory when they are
// inside it or near it.
func relPath(wd, name string) string {
	if name == "" || !filepath.IsAbs(name) {
		return name
	}
	rel, err := filepath.Rel(wd, name)
	if err != nil {
		return name
	}
	return rel
}

// relPos is p with a file name relative to wd.
func relPos(wd string, p token.Position) token.Position {
	p.Filename = relPath(wd, p.Filename)
	return p
}

// parsePos parses the "file:line:col" of a go/packages error.
func parsePos(s string) (token.Position, bool) {
	var p token.Position
	rest := s
	nums := []*int{&p.Column, &p.Line}
	for i := 0; i < 2; i++ {
		j := strings.LastIndexByte(rest, ':')
		if j < 0 {
			break
		}
		n, err := strconv.Atoi(rest[j+1:])
		if err != nil {
			break
		}
		*nums[i] = n
		rest = rest[:j]
	}
	if p.Column != 0 && p.Line == 0 { // only "file:line"
		p.Line, p.Column = p.Column, 0
	}
	p.Filename = rest
	return p, p.Filename != "" && p.Line > 0
}
