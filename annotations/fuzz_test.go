package annotations_test

import (
	"go/token"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pgflow-go/pgflow/annotations"
)

// FuzzParseLine checks that ParseLine never panics, that every error is
// positioned inside the line, that a returned directive holds only valid
// values, and that its canonical rendering parses back to the same directive.
// The seed corpus is in testdata/fuzz/FuzzParseLine.
func FuzzParseLine(f *testing.F) {
	f.Fuzz(func(t *testing.T, text string) {
		fset := token.NewFileSet()
		file := fset.AddFile("fuzz.go", -1, len(text))
		d, errs := annotations.ParseLine(fset, token.Pos(file.Base()), text)

		for _, e := range errs {
			if e.Pos.Filename != "fuzz.go" || e.Pos.Line != 1 || e.Pos.Column < 1 || e.Pos.Column > len(text)+1 {
				t.Errorf("error outside the line: %v", e)
			}
			if e.Msg == "" {
				t.Errorf("error without a message at %v", e.Pos)
			}
		}
		if d == nil {
			if len(errs) == 0 && strings.HasPrefix(text, "//pgflow:") {
				t.Errorf("no directive and no error for %q", text)
			}
			return
		}
		if !strings.HasPrefix(text, "//pgflow:"+string(d.Kind)) {
			t.Errorf("directive %q from a line that does not start with it: %q", d.Kind, text)
		}
		checkValid(t, d)

		// A returned directive, even one from a line with errors, holds only
		// valid parts: its canonical form parses without errors to the same
		// directive, and renders the same again.
		canonical := d.String()
		d2, errs2 := annotations.ParseLine(nil, 0, canonical)
		if len(errs2) > 0 || d2 == nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canonical, text, errs2)
		}
		if diff := cmp.Diff(d, d2, cmpopts.IgnoreTypes(token.Position{})); diff != "" {
			t.Errorf("round trip of %q through %q changed it (-first +second):\n%s", text, canonical, diff)
		}
		if again := d2.String(); again != canonical {
			t.Errorf("canonical form not stable: %q then %q", canonical, again)
		}
	})
}

// checkValid checks that every value in d obeys the grammar.
func checkValid(t *testing.T, d *annotations.Directive) {
	t.Helper()
	if !annotations.ValidSlug(d.Slug) {
		t.Errorf("invalid slug %q returned", d.Slug)
	}
	if d.Flow != "" && !annotations.ValidSlug(d.Flow) {
		t.Errorf("invalid flow= slug %q returned", d.Flow)
	}
	seen := map[string]bool{}
	for _, dep := range d.Deps {
		if !annotations.ValidSlug(dep.Slug) || seen[dep.Slug] || dep.Slug == d.Slug {
			t.Errorf("invalid, repeated or self dependency %q returned", dep.Slug)
		}
		seen[dep.Slug] = true
	}
	o := d.Options
	if o.MaxAttempts != nil && (*o.MaxAttempts < 1 || *o.MaxAttempts > annotations.MaxAttemptsLimit) {
		t.Errorf("maxAttempts %d out of range", *o.MaxAttempts)
	}
	for _, p := range []*time.Duration{o.BaseDelay, o.Timeout} {
		if p != nil && *p <= 0 {
			t.Errorf("non-positive duration %v returned", *p)
		}
	}
	if o.StartDelay != nil && *o.StartDelay < 0 {
		t.Errorf("negative startDelay %v returned", *o.StartDelay)
	}
	if d.Kind == annotations.KindFlow && (d.Flow != "" || d.Deps != nil || d.Fanout || o.StartDelay != nil) {
		t.Errorf("flow directive with step options: %+v", d)
	}
}
