package annotations

import (
	"go/ast"
	"go/token"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults for options that neither a step nor its flow sets. The generator
// and the runtime both use these values.
const (
	// DefaultMaxAttempts is how often a task is tried before its step fails.
	DefaultMaxAttempts = 3
	// DefaultBaseDelay is the delay before the first retry of a failed task.
	DefaultBaseDelay = time.Second
	// DefaultTimeout is how long one attempt of a task may run.
	DefaultTimeout = 5 * time.Minute
	// DefaultStartDelay is how long a step's tasks wait after the step starts.
	DefaultStartDelay time.Duration = 0
)

// MaxAttemptsLimit is the largest accepted maxAttempts value (it fits a
// Postgres integer column).
const MaxAttemptsLimit = math.MaxInt32

// SlugPattern is the regular expression every flow and step slug matches.
const SlugPattern = `^[a-z][a-z0-9_]{0,62}$`

var slugRE = regexp.MustCompile(SlugPattern)

// ValidSlug reports whether s is a valid flow or step slug, that is whether it
// matches [SlugPattern].
func ValidSlug(s string) bool {
	return slugRE.MatchString(s)
}

// Kind is the name of a directive: [KindFlow] or [KindStep].
type Kind string

// The directive kinds.
const (
	// KindFlow is //pgflow:flow, which declares a flow on its input type.
	KindFlow Kind = "flow"
	// KindStep is //pgflow:step, which declares a step on its handler.
	KindStep Kind = "step"
)

// Options are the retry and timing options of a flow or a step, as written.
// A nil field was not given and is inherited (from the flow, then from the
// defaults); see [Options.Resolve]. Each position field locates the
// key=value argument that set the option, and is zero when it is nil.
type Options struct {
	MaxAttempts *int
	BaseDelay   *time.Duration
	Timeout     *time.Duration
	StartDelay  *time.Duration // steps only

	MaxAttemptsPos token.Position
	BaseDelayPos   token.Position
	TimeoutPos     token.Position
	StartDelayPos  token.Position
}

// ResolvedOptions are effective options: every value is set.
type ResolvedOptions struct {
	MaxAttempts int
	BaseDelay   time.Duration
	Timeout     time.Duration
	StartDelay  time.Duration
}

// Resolve returns the effective options of a step whose own options are o and
// whose flow's options are flow: each value comes from o when set there, else
// from flow when set there, else from the defaults. For a flow's own effective
// options, call f.Options.Resolve(Options{}).
func (o Options) Resolve(flow Options) ResolvedOptions {
	return ResolvedOptions{
		MaxAttempts: pick(o.MaxAttempts, flow.MaxAttempts, DefaultMaxAttempts),
		BaseDelay:   pick(o.BaseDelay, flow.BaseDelay, DefaultBaseDelay),
		Timeout:     pick(o.Timeout, flow.Timeout, DefaultTimeout),
		StartDelay:  pick(o.StartDelay, flow.StartDelay, DefaultStartDelay),
	}
}

// pick returns *own if set, else *inherited if set, else def.
func pick[T any](own, inherited *T, def T) T {
	switch {
	case own != nil:
		return *own
	case inherited != nil:
		return *inherited
	default:
		return def
	}
}

// Dep is one entry of a step's deps= list.
type Dep struct {
	Slug string
	Pos  token.Position // position of the slug inside the deps= value
}

// Flow is a //pgflow:flow directive together with the type it annotates.
type Flow struct {
	Slug     string
	SlugPos  token.Position
	Options  Options
	Pos      token.Position // position of the "//" that starts the directive
	TypeName string         // name of the annotated type: the flow's input type
	TypeSpec *ast.TypeSpec  // the annotated type
}

// Step is a //pgflow:step directive together with the function or method it
// annotates.
type Step struct {
	Slug    string
	SlugPos token.Position
	Flow    string         // value of flow=, or "" when flow= was not given
	FlowPos token.Position // position of the flow= value; zero when absent
	Deps    []Dep          // deps= entries in written order; nil when none
	Fanout  bool
	// FanoutPos is the position of the fanout flag; zero when absent.
	FanoutPos token.Position
	Options   Options
	Pos       token.Position // position of the "//" that starts the directive
	FuncDecl  *ast.FuncDecl  // the annotated function or method
}

// Directive is one parsed //pgflow: line, before it is attached to a
// declaration. [ParseLine] returns it. Fields that do not apply to Kind
// (Flow, Deps, Fanout for a flow) are zero.
type Directive struct {
	Kind      Kind
	Pos       token.Position // position of the "//" that starts the directive
	Slug      string
	SlugPos   token.Position
	Flow      string
	FlowPos   token.Position
	Deps      []Dep
	Fanout    bool
	FanoutPos token.Position
	Options   Options
}

// String renders d in canonical form: the slug, then flow=, deps=, fanout,
// maxAttempts=, baseDelay=, timeout= and startDelay= for those that are set.
// Parsing the result gives d back, positions aside.
func (d *Directive) String() string {
	var b strings.Builder
	b.WriteString("//pgflow:")
	b.WriteString(string(d.Kind))
	b.WriteString(" ")
	b.WriteString(d.Slug)
	if d.Flow != "" {
		b.WriteString(" flow=" + d.Flow)
	}
	if len(d.Deps) > 0 {
		slugs := make([]string, len(d.Deps))
		for i, dep := range d.Deps {
			slugs[i] = dep.Slug
		}
		b.WriteString(" deps=" + strings.Join(slugs, ","))
	}
	if d.Fanout {
		b.WriteString(" fanout")
	}
	if o := d.Options.MaxAttempts; o != nil {
		b.WriteString(" maxAttempts=" + strconv.Itoa(*o))
	}
	if o := d.Options.BaseDelay; o != nil {
		b.WriteString(" baseDelay=" + o.String())
	}
	if o := d.Options.Timeout; o != nil {
		b.WriteString(" timeout=" + o.String())
	}
	if o := d.Options.StartDelay; o != nil {
		b.WriteString(" startDelay=" + o.String())
	}
	return b.String()
}
