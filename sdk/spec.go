package sdk

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Defaults for options a flow leaves unset.
const (
	DefaultMaxAttempts = 3
	DefaultBaseDelay   = time.Second
	DefaultTimeout     = 5 * time.Minute
)

// FlowSpec describes a flow's shape and options. Generated code fills it in
// from //pgflow: annotations; hand-written code may build one directly.
// Zero options mean the defaults.
type FlowSpec struct {
	Slug        string
	MaxAttempts int           // attempts per task, >= 1 (0: DefaultMaxAttempts)
	BaseDelay   time.Duration // retry n waits BaseDelay * 2^(n-1) (0: DefaultBaseDelay)
	Timeout     time.Duration // per attempt (0: DefaultTimeout)
	Steps       []StepSpec    // in topological order: a step after its dependencies
}

// StepSpec describes one step. Zero options inherit the flow's.
type StepSpec struct {
	Slug string
	// Deps are the slugs of the steps whose outputs this step takes, in the
	// order of the handler's parameters.
	Deps []string
	// Fanout makes the step run once per element of its one dependency's
	// array output (or of the flow input, when it has no dependency); its
	// output is the array of the results, in element order.
	Fanout      bool
	MaxAttempts int
	BaseDelay   time.Duration
	Timeout     time.Duration
	StartDelay  time.Duration // tasks become claimable this long after the step starts
}

var slugPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// ValidSlug reports whether s is a valid flow or step slug: a lower-case
// letter, then up to 62 lower-case letters, digits or underscores.
func ValidSlug(s string) bool { return slugPattern.MatchString(s) }

// Step returns the step with the given slug.
func (f FlowSpec) Step(slug string) (StepSpec, bool) {
	for _, s := range f.Steps {
		if s.Slug == slug {
			return s, true
		}
	}
	return StepSpec{}, false
}

// Validate checks the spec: slugs, unique steps, dependencies that come
// earlier, fanout steps with at most one dependency, sensible options. All
// problems are reported together.
func (f FlowSpec) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("flow %q: "+format, append([]any{f.Slug}, args...)...))
	}
	if !ValidSlug(f.Slug) {
		add("invalid flow slug: slugs match %s", slugPattern)
	}
	checkOptions := func(owner string, maxAttempts int, delays map[string]time.Duration) {
		if maxAttempts < 0 {
			add("%s: MaxAttempts must be >= 1 (or 0 for the default), got %d", owner, maxAttempts)
		}
		for name, d := range delays {
			if d < 0 {
				add("%s: %s must not be negative, got %s", owner, name, d)
			}
		}
	}
	checkOptions("flow options", f.MaxAttempts, map[string]time.Duration{"BaseDelay": f.BaseDelay, "Timeout": f.Timeout})
	if len(f.Steps) == 0 {
		add("a flow needs at least one step")
	}
	seen := map[string]bool{}
	for _, s := range f.Steps {
		owner := fmt.Sprintf("step %q", s.Slug)
		if !ValidSlug(s.Slug) {
			add("invalid step slug %q: slugs match %s", s.Slug, slugPattern)
		}
		if seen[s.Slug] {
			add("step %q is defined twice", s.Slug)
		}
		depSeen := map[string]bool{}
		for _, d := range s.Deps {
			switch {
			case d == s.Slug:
				add("%s depends on itself", owner)
			case depSeen[d]:
				add("%s lists dependency %q twice", owner, d)
			case !seen[d]:
				if _, ok := f.Step(d); ok {
					add("%s depends on %q, which comes later: list steps after their dependencies", owner, d)
				} else {
					add("%s depends on unknown step %q", owner, d)
				}
			}
			depSeen[d] = true
		}
		if s.Fanout && len(s.Deps) > 1 {
			add("%s: fanout steps must have exactly one dependency (or none, to map over the flow input), got %s",
				owner, strings.Join(s.Deps, ", "))
		}
		checkOptions(owner, s.MaxAttempts, map[string]time.Duration{
			"BaseDelay": s.BaseDelay, "Timeout": s.Timeout, "StartDelay": s.StartDelay})
		seen[s.Slug] = true
	}
	return errors.Join(errs...)
}

// resolved returns the flow options with defaults applied.
func (f FlowSpec) resolved() (maxAttempts int, baseDelay, timeout time.Duration) {
	maxAttempts, baseDelay, timeout = f.MaxAttempts, f.BaseDelay, f.Timeout
	if maxAttempts == 0 {
		maxAttempts = DefaultMaxAttempts
	}
	if baseDelay == 0 {
		baseDelay = DefaultBaseDelay
	}
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	return maxAttempts, baseDelay, timeout
}

// rootFanout reports whether the flow maps over its input.
func (f FlowSpec) rootFanout() bool {
	for _, s := range f.Steps {
		if s.Fanout && len(s.Deps) == 0 {
			return true
		}
	}
	return false
}
