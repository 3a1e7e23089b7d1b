package annotations_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pgflow-go/pgflow/annotations"
)

// flowView is a compact projection of a Flow: positions as "line:col".
type flowView struct {
	Type string   // annotated type
	At   string   // position of the directive
	Slug string   // "slug@line:col"
	Opts []string // "key=value@line:col", in canonical order
}

// stepView is a compact projection of a Step: positions as "line:col".
type stepView struct {
	Func   string   // annotated function, "T.M" for a method
	At     string   // position of the directive
	Slug   string   // "slug@line:col"
	Flow   string   // "slug@line:col", or "" when flow= is absent
	Deps   []string // "slug@line:col"
	Fanout string   // position of the fanout flag, or ""
	Opts   []string // "key=value@line:col", in canonical order
}

func lc(p token.Position) string {
	if !p.IsValid() {
		return ""
	}
	return fmt.Sprintf("%d:%d", p.Line, p.Column)
}

func at(s string, p token.Position) string {
	if s == "" && !p.IsValid() {
		return ""
	}
	return s + "@" + lc(p)
}

func optViews(o annotations.Options) []string {
	var out []string
	if o.MaxAttempts != nil {
		out = append(out, at(fmt.Sprintf("maxAttempts=%d", *o.MaxAttempts), o.MaxAttemptsPos))
	}
	if o.BaseDelay != nil {
		out = append(out, at("baseDelay="+o.BaseDelay.String(), o.BaseDelayPos))
	}
	if o.Timeout != nil {
		out = append(out, at("timeout="+o.Timeout.String(), o.TimeoutPos))
	}
	if o.StartDelay != nil {
		out = append(out, at("startDelay="+o.StartDelay.String(), o.StartDelayPos))
	}
	return out
}

func viewFlows(flows []*annotations.Flow) []flowView {
	var out []flowView
	for _, f := range flows {
		if f.TypeSpec == nil || f.TypeSpec.Name.Name != f.TypeName {
			panic("TypeSpec does not match TypeName " + f.TypeName)
		}
		out = append(out, flowView{Type: f.TypeName, At: lc(f.Pos), Slug: at(f.Slug, f.SlugPos), Opts: optViews(f.Options)})
	}
	return out
}

func viewSteps(steps []*annotations.Step) []stepView {
	var out []stepView
	for _, s := range steps {
		v := stepView{Func: funcName(s.FuncDecl), At: lc(s.Pos), Slug: at(s.Slug, s.SlugPos), Flow: at(s.Flow, s.FlowPos), Opts: optViews(s.Options)}
		for _, d := range s.Deps {
			v.Deps = append(v.Deps, at(d.Slug, d.Pos))
		}
		if s.Fanout {
			v.Fanout = lc(s.FanoutPos)
		}
		out = append(out, v)
	}
	return out
}

func funcName(d *ast.FuncDecl) string {
	if d.Recv == nil {
		return d.Name.Name
	}
	t := d.Recv.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	switch x := t.(type) {
	case *ast.IndexExpr:
		t = x.X
	case *ast.IndexListExpr:
		t = x.X
	}
	return t.(*ast.Ident).Name + "." + d.Name.Name
}

func parseSource(t *testing.T, src string) (*token.FileSet, *ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "file.go", src, parser.ParseComments)
	if err != nil {
		t.Fatalf("parsing test source: %v", err)
	}
	return fset, f
}

// slug63 and slug64 are slugs of the longest valid length and one more.
var (
	slug63 = "a" + strings.Repeat("b", 62)
	slug64 = "a" + strings.Repeat("b", 63)
)

func TestParseFile(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		flows []flowView
		steps []stepView
		errs  []string
	}{
		{
			name: "design example",
			src: `package p

//pgflow:flow analyze_websites maxAttempts=3 baseDelay=1s timeout=5m
type SitesInput struct{ URLs []string }

//pgflow:step prepare_urls
func PrepareURLs(ctx context.Context, in SitesInput) ([]Site, error)

//pgflow:step analyze_site deps=prepare_urls fanout maxAttempts=5 timeout=30s
func AnalyzeSite(ctx context.Context, site Site) (Analysis, error)

//pgflow:step summarize deps=analyze_site
func Summarize(ctx context.Context, results []Analysis) (Summary, error)
`,
			flows: []flowView{{Type: "SitesInput", At: "3:1", Slug: "analyze_websites@3:15", Opts: []string{"maxAttempts=3@3:32", "baseDelay=1s@3:46", "timeout=5m0s@3:59"}}},
			steps: []stepView{
				{Func: "PrepareURLs", At: "6:1", Slug: "prepare_urls@6:15"},
				{Func: "AnalyzeSite", At: "9:1", Slug: "analyze_site@9:15", Deps: []string{"prepare_urls@9:33"}, Fanout: "9:46", Opts: []string{"maxAttempts=5@9:53", "timeout=30s@9:67"}},
				{Func: "Summarize", At: "12:1", Slug: "summarize@12:15", Deps: []string{"analyze_site@12:30"}},
			},
		},
		{
			name: "no directives",
			src: `package p

//go:generate go run ./gen
//go:build linux

// F does things. It mentions pgflow:step in prose, and //pgflow:step x mid-line.
//
//go:noinline
//nolint:all
//pgflowx:step not_ours
// pgflow: prose after the tool name is left alone
// pgflow:
func F() {}
`,
		},
		{
			name: "every step option",
			src: `package p

//pgflow:step s flow=f deps=a,b fanout maxAttempts=1 baseDelay=500ms timeout=1h startDelay=0s
func S() {}
`,
			steps: []stepView{{Func: "S", At: "3:1", Slug: "s@3:15", Flow: "f@3:22", Deps: []string{"a@3:29", "b@3:31"}, Fanout: "3:33",
				Opts: []string{"maxAttempts=1@3:40", "baseDelay=500ms@3:54", "timeout=1h0m0s@3:70", "startDelay=0s@3:81"}}},
		},
		{
			name: "options in any order, separated by tabs and several spaces",
			src:  "package p\n\n//pgflow:step s\ttimeout=2m   fanout\tdeps=a maxAttempts=2147483647 flow=f startDelay=0\nfunc S() {}\n",
			steps: []stepView{{Func: "S", At: "3:1", Slug: "s@3:15", Flow: "f@3:72", Deps: []string{"a@3:42"}, Fanout: "3:30",
				Opts: []string{"maxAttempts=2147483647@3:44", "timeout=2m0s@3:17", "startDelay=0s@3:74"}}},
		},
		{
			name: "methods",
			src: `package p

//pgflow:step fetch
func (c *Crawler) Fetch(ctx context.Context) error

//pgflow:step parse deps=fetch
func (c Crawler) Parse(ctx context.Context, page string) (Doc, error)

//pgflow:step index deps=parse
func (s *Store[K, V]) Index(ctx context.Context, doc Doc) error
`,
			steps: []stepView{
				{Func: "Crawler.Fetch", At: "3:1", Slug: "fetch@3:15"},
				{Func: "Crawler.Parse", At: "6:1", Slug: "parse@6:15", Deps: []string{"fetch@6:26"}},
				{Func: "Store.Index", At: "9:1", Slug: "index@9:15", Deps: []string{"parse@9:26"}},
			},
		},
		{
			name: "grouped type declaration",
			src: `package p

type (
	// A is one input.
	//pgflow:flow first
	A struct{}

	B int

	//pgflow:flow second timeout=1m
	C []string
)
`,
			flows: []flowView{
				{Type: "A", At: "5:2", Slug: "first@5:16"},
				{Type: "C", At: "10:2", Slug: "second@10:16", Opts: []string{"timeout=1m0s@10:23"}},
			},
		},
		{
			name: "grouped declaration of one type may carry the directive outside",
			src: `package p

//pgflow:flow only
type (
	A struct{}
)
`,
			flows: []flowView{{Type: "A", At: "3:1", Slug: "only@3:15"}},
		},
		{
			name: "grouped declaration of several types may not carry a flow outside",
			src: `package p

//pgflow:flow both
type (
	A struct{}
	B struct{}
)
`,
			errs: []string{"file.go:3:1: //pgflow:flow on a grouped type declaration must be in the doc comment of one of its types"},
		},
		{
			name: "directive moved by gofmt to the end of the doc comment, after prose",
			src: `package p

// Input is the flow's input.
//
// It carries the URLs to analyse.
//
//pgflow:flow analyze
type Input struct{}

// Prepare turns the input into sites.
//pgflow:step prepare
// Trailing prose that gofmt would move above the directive.
func Prepare() {}
`,
			flows: []flowView{{Type: "Input", At: "7:1", Slug: "analyze@7:15"}},
			steps: []stepView{{Func: "Prepare", At: "11:1", Slug: "prepare@11:15"}},
		},
		{
			name: "quoted arguments and values",
			src:  "package p\n\n//pgflow:step \"s\" `deps=a,b` \"maxAttempts=4\" timeout=\"5m\" baseDelay=`2s` flow=\"f\"\nfunc S() {}\n",
			steps: []stepView{{Func: "S", At: "3:1", Slug: "s@3:15", Flow: "f@3:80", Deps: []string{"a@3:25", "b@3:27"},
				Opts: []string{"maxAttempts=4@3:30", "baseDelay=2s@3:59", "timeout=5m0s@3:46"}}},
		},
		{
			name:  "quoted arguments with escapes point at the argument",
			src:   "package p\n\n//pgflow:step s \"deps=\\x61,b,B\"\nfunc S() {}\n",
			steps: []stepView{{Func: "S", At: "3:1", Slug: "s@3:15", Deps: []string{"a@3:17", "b@3:17"}}},
			errs:  []string{`file.go:3:17: invalid dependency slug "B": slugs match ^[a-z][a-z0-9_]{0,62}$`},
		},
		{
			name: "slug edge cases",
			src: `package p

//pgflow:step ` + slug63 + `
func Long() {}

//pgflow:step ` + slug64 + `
func TooLong() {}

//pgflow:step 1abc
func Digit() {}

//pgflow:step Analyze
func Upper() {}

//pgflow:step a-b
func Hyphen() {}

//pgflow:step a;drop
func SQL() {}

//pgflow:step "a b"
func Space() {}

//pgflow:step ""
func Empty() {}

//pgflow:step _a
func Underscore() {}

//pgflow:step été
func Unicode() {}

//pgflow:step "x');drop table flows;--"
func Injection() {}

//pgflow:step a9_z
func Fine() {}
`,
			steps: []stepView{
				{Func: "Long", At: "3:1", Slug: slug63 + "@3:15"},
				{Func: "Fine", At: "36:1", Slug: "a9_z@36:15"},
			},
			errs: []string{
				`file.go:6:15: invalid step slug "` + slug64 + `": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:9:15: invalid step slug "1abc": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:12:15: invalid step slug "Analyze": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:15:15: invalid step slug "a-b": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:18:15: invalid step slug "a;drop": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:21:15: invalid step slug "a b": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:24:15: invalid step slug "": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:27:15: invalid step slug "_a": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:30:15: invalid step slug "été": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:33:15: invalid step slug "x');drop table flows;--": slugs match ^[a-z][a-z0-9_]{0,62}$`,
			},
		},
		{
			name: "flow slugs and flow= slugs are checked too",
			src: `package p

//pgflow:flow Sites
type In struct{}

//pgflow:step s flow=my-flow
func S() {}
`,
			steps: []stepView{{Func: "S", At: "6:1", Slug: "s@6:15"}},
			errs: []string{
				`file.go:3:15: invalid flow slug "Sites": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:6:22: invalid flow slug "my-flow": slugs match ^[a-z][a-z0-9_]{0,62}$`,
			},
		},
		{
			name: "missing slug",
			src: `package p

//pgflow:flow
type In struct{}

//pgflow:step
func A() {}

//pgflow:step deps=a maxAttempts=0
func B() {}
`,
			errs: []string{
				`file.go:3:1: missing flow slug (write //pgflow:flow <slug> [options])`,
				`file.go:6:1: missing step slug (write //pgflow:step <slug> [options])`,
				`file.go:9:15: missing step slug before "deps=a" (the slug comes first: //pgflow:step <slug> [options])`,
				`file.go:9:34: invalid maxAttempts "0": must be an integer >= 1`,
			},
		},
		{
			name: "unknown directive names",
			src: `package p

//pgflow:stepp x
func A() {}

//pgflow:Step x
func B() {}

//pgflow:flw x
type In struct{}

//pgflow:run x
func C() {}

//pgflow:
func D() {}

//pgflow:step:x y
func E() {}
`,
			errs: []string{
				`file.go:3:1: unknown directive //pgflow:stepp (did you mean //pgflow:step?)`,
				`file.go:6:1: unknown directive //pgflow:Step (did you mean //pgflow:step?)`,
				`file.go:9:1: unknown directive //pgflow:flw (did you mean //pgflow:flow?)`,
				`file.go:12:1: unknown directive //pgflow:run (known: //pgflow:flow, //pgflow:step)`,
				`file.go:15:1: missing directive name after //pgflow: (write //pgflow:flow or //pgflow:step)`,
				`file.go:18:1: unknown directive //pgflow:step:x (did you mean //pgflow:step?)`,
			},
		},
		{
			name: "unknown options with and without a hint",
			src: `package p

//pgflow:flow f maxAttempt=3 Timeout=1m retries=2 basedelay=1s
type In struct{}

//pgflow:step s dep=a fanot timout=1s start_delay=1s x
func S() {}
`,
			flows: []flowView{{Type: "In", At: "3:1", Slug: "f@3:15"}},
			steps: []stepView{{Func: "S", At: "6:1", Slug: "s@6:15"}},
			errs: []string{
				`file.go:3:17: unknown option "maxAttempt" (did you mean "maxAttempts"?)`,
				`file.go:3:30: unknown option "Timeout" (did you mean "timeout"?)`,
				`file.go:3:41: unknown option "retries" (known options: maxAttempts, baseDelay, timeout)`,
				`file.go:3:51: unknown option "basedelay" (did you mean "baseDelay"?)`,
				`file.go:6:17: unknown option "dep" (did you mean "deps"?)`,
				`file.go:6:23: unexpected argument "fanot" (did you mean "fanout"?)`,
				`file.go:6:29: unknown option "timout" (did you mean "timeout"?)`,
				`file.go:6:39: unknown option "start_delay" (did you mean "startDelay"?)`,
				`file.go:6:54: unexpected argument "x" (known options: flow, deps, fanout, maxAttempts, baseDelay, timeout, startDelay)`,
			},
		},
		{
			name: "step options on a flow",
			src: `package p

//pgflow:flow f startDelay=1s deps=a fanout flow=g
type In struct{}
`,
			flows: []flowView{{Type: "In", At: "3:1", Slug: "f@3:15"}},
			errs: []string{
				`file.go:3:17: startDelay is a step option, not allowed on //pgflow:flow`,
				`file.go:3:31: deps is a step option, not allowed on //pgflow:flow`,
				`file.go:3:38: fanout is a step option, not allowed on //pgflow:flow`,
				`file.go:3:45: flow is a step option, not allowed on //pgflow:flow`,
			},
		},
		{
			name: "fanout takes no value",
			src: `package p

//pgflow:step a fanout=true
func A() {}

//pgflow:step b fanout=x
func B() {}

//pgflow:step c fanout=
func C() {}
`,
			steps: []stepView{
				{Func: "A", At: "3:1", Slug: "a@3:15"},
				{Func: "B", At: "6:1", Slug: "b@6:15"},
				{Func: "C", At: "9:1", Slug: "c@9:15"},
			},
			errs: []string{
				`file.go:3:17: fanout is a flag and takes no value (write fanout, not "fanout=true")`,
				`file.go:6:17: fanout is a flag and takes no value (write fanout, not "fanout=x")`,
				`file.go:9:17: fanout is a flag and takes no value (write fanout, not "fanout=")`,
			},
		},
		{
			name: "keys given twice",
			src: `package p

//pgflow:flow f maxAttempts=3 maxAttempts=4
type In struct{}

//pgflow:step s deps=a deps=b fanout fanout flow=f flow=f
func S() {}
`,
			flows: []flowView{{Type: "In", At: "3:1", Slug: "f@3:15", Opts: []string{"maxAttempts=3@3:17"}}},
			steps: []stepView{{Func: "S", At: "6:1", Slug: "s@6:15", Flow: "f@6:50", Deps: []string{"a@6:22"}, Fanout: "6:31"}},
			errs: []string{
				`file.go:3:31: duplicate option "maxAttempts"`,
				`file.go:6:24: duplicate option "deps"`,
				`file.go:6:38: duplicate option "fanout"`,
				`file.go:6:52: duplicate option "flow"`,
			},
		},
		{
			name: "deps mistakes",
			src: `package p

//pgflow:step a deps=
func A() {}

//pgflow:step b deps=x,,y
func B() {}

//pgflow:step c deps=x,x,y,x
func C() {}

//pgflow:step d deps=x,d
func D() {}

//pgflow:step e deps=x,
func E() {}

//pgflow:step f deps=x,Y,z
func F() {}

//pgflow:step g deps
func G() {}

//pgflow:step h deps=x, y
func H() {}
`,
			steps: []stepView{
				{Func: "A", At: "3:1", Slug: "a@3:15"},
				{Func: "B", At: "6:1", Slug: "b@6:15", Deps: []string{"x@6:22", "y@6:25"}},
				{Func: "C", At: "9:1", Slug: "c@9:15", Deps: []string{"x@9:22", "y@9:26"}},
				{Func: "D", At: "12:1", Slug: "d@12:15", Deps: []string{"x@12:22"}},
				{Func: "E", At: "15:1", Slug: "e@15:15", Deps: []string{"x@15:22"}},
				{Func: "F", At: "18:1", Slug: "f@18:15", Deps: []string{"x@18:22", "z@18:26"}},
				{Func: "G", At: "21:1", Slug: "g@21:15"},
				{Func: "H", At: "24:1", Slug: "h@24:15", Deps: []string{"x@24:22"}},
			},
			errs: []string{
				`file.go:3:17: empty deps (write deps=<slug>[,<slug>...])`,
				`file.go:6:24: empty element in deps "x,,y"`,
				`file.go:9:24: duplicate dependency "x"`,
				`file.go:9:28: duplicate dependency "x"`,
				`file.go:12:24: step "d" depends on itself`,
				`file.go:15:23: trailing comma in deps "x," (write the list without spaces, as deps=a,b)`,
				`file.go:18:24: invalid dependency slug "Y": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:21:17: deps needs a value (write deps=<slug>[,<slug>...])`,
				`file.go:24:23: trailing comma in deps "x," (write the list without spaces, as deps=a,b)`,
				`file.go:24:25: unexpected argument "y" (known options: flow, deps, fanout, maxAttempts, baseDelay, timeout, startDelay)`,
			},
		},
		{
			name: "maxAttempts values",
			src: `package p

//pgflow:step s maxAttempts=0 maxAttempts=-1
func S() {}

//pgflow:step t maxAttempts=abc
func T() {}

//pgflow:step u maxAttempts=1.5
func U() {}

//pgflow:step v maxAttempts=2147483648
func V() {}

//pgflow:step w maxAttempts=99999999999999999999
func W() {}

//pgflow:step x maxAttempts=-99999999999999999999
func X() {}

//pgflow:step y maxAttempts=
func Y() {}

//pgflow:step z maxAttempts
func Z() {}
`,
			steps: []stepView{
				{Func: "S", At: "3:1", Slug: "s@3:15"},
				{Func: "T", At: "6:1", Slug: "t@6:15"},
				{Func: "U", At: "9:1", Slug: "u@9:15"},
				{Func: "V", At: "12:1", Slug: "v@12:15"},
				{Func: "W", At: "15:1", Slug: "w@15:15"},
				{Func: "X", At: "18:1", Slug: "x@18:15"},
				{Func: "Y", At: "21:1", Slug: "y@21:15"},
				{Func: "Z", At: "24:1", Slug: "z@24:15"},
			},
			errs: []string{
				`file.go:3:29: invalid maxAttempts "0": must be an integer >= 1`,
				`file.go:3:31: duplicate option "maxAttempts"`,
				`file.go:6:29: invalid maxAttempts "abc": must be an integer >= 1`,
				`file.go:9:29: invalid maxAttempts "1.5": must be an integer >= 1`,
				`file.go:12:29: invalid maxAttempts "2147483648": must be at most 2147483647`,
				`file.go:15:29: invalid maxAttempts "99999999999999999999": must be at most 2147483647`,
				`file.go:18:29: invalid maxAttempts "-99999999999999999999": must be an integer >= 1`,
				`file.go:21:29: invalid maxAttempts "": must be an integer >= 1`,
				`file.go:24:17: maxAttempts needs a value (write maxAttempts=N)`,
			},
		},
		{
			name: "duration values",
			src: `package p

//pgflow:flow f baseDelay=0s timeout=5
type In struct{}

//pgflow:step s baseDelay=-1s timeout=0 startDelay=-1ms
func S() {}

//pgflow:step t timeout=5minutes baseDelay=1d startDelay=soon
func T() {}

//pgflow:step u "timeout=5 minutes" timeout="5 minutes" startDelay=0 baseDelay=1.5s
func U() {}
`,
			flows: []flowView{{Type: "In", At: "3:1", Slug: "f@3:15"}},
			steps: []stepView{
				{Func: "S", At: "6:1", Slug: "s@6:15"},
				{Func: "T", At: "9:1", Slug: "t@9:15"},
				{Func: "U", At: "12:1", Slug: "u@12:15", Opts: []string{"baseDelay=1.5s@12:70", "startDelay=0s@12:57"}},
			},
			errs: []string{
				`file.go:3:27: invalid baseDelay "0s": must be positive`,
				`file.go:3:38: invalid timeout "5": not a Go duration (e.g. 30s, 5m)`,
				`file.go:6:27: invalid baseDelay "-1s": must be positive`,
				`file.go:6:39: invalid timeout "0": must be positive`,
				`file.go:6:52: invalid startDelay "-1ms": must not be negative`,
				`file.go:9:25: invalid timeout "5minutes": not a Go duration (e.g. 30s, 5m)`,
				`file.go:9:44: invalid baseDelay "1d": not a Go duration (e.g. 30s, 5m)`,
				`file.go:9:58: invalid startDelay "soon": not a Go duration (e.g. 30s, 5m)`,
				`file.go:12:26: invalid timeout "5 minutes": not a Go duration (e.g. 30s, 5m)`,
				`file.go:12:37: duplicate option "timeout"`,
				`file.go:12:48: unexpected argument "minutes\"" (known options: flow, deps, fanout, maxAttempts, baseDelay, timeout, startDelay)`,
			},
		},
		{
			name: "every mistake on one line is reported",
			src: `package p

//pgflow:step Bad deps=a,,Bad fanout=1 maxAttempts=0 maxAttempt=2 timeout=soon timeout=1s x
func S() {}
`,
			errs: []string{
				`file.go:3:15: invalid step slug "Bad": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:3:26: empty element in deps "a,,Bad"`,
				`file.go:3:27: invalid dependency slug "Bad": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:3:31: fanout is a flag and takes no value (write fanout, not "fanout=1")`,
				`file.go:3:52: invalid maxAttempts "0": must be an integer >= 1`,
				`file.go:3:54: unknown option "maxAttempt" (did you mean "maxAttempts"?)`,
				`file.go:3:75: invalid timeout "soon": not a Go duration (e.g. 30s, 5m)`,
				`file.go:3:80: duplicate option "timeout"`,
				`file.go:3:91: unexpected argument "x" (known options: flow, deps, fanout, maxAttempts, baseDelay, timeout, startDelay)`,
			},
		},
		{
			name: "near misses that Go would treat as documentation",
			src: "package p\n\n" +
				"// S does things.\n" +
				"// pgflow:step s\n" +
				"func S() {}\n\n" +
				"//\tpgflow:flow f\n" +
				"type In struct{}\n\n" +
				"//   pgflow:stepp t\n" +
				"func T() {}\n\n" +
				"/*pgflow:step u*/\n" +
				"func U() {}\n\n" +
				"/* pgflow:flow g */\n" +
				"type In2 struct{}\n\n" +
				"//PGFLOW:step v\n" +
				"func V() {}\n\n" +
				"//Pgflow:flow h\n" +
				"type In3 struct{}\n",
			errs: []string{
				`file.go:4:1: // pgflow: written with a space is not a directive; write //pgflow:step`,
				`file.go:7:1: // pgflow: written with a space is not a directive; write //pgflow:flow`,
				`file.go:10:1: // pgflow: written with a space is not a directive; write //pgflow:step`,
				`file.go:13:1: /*pgflow: block comment is not a directive; write //pgflow:step as a // line comment`,
				`file.go:16:1: /*pgflow: block comment is not a directive; write //pgflow:flow as a // line comment`,
				`file.go:19:1: //PGFLOW: with upper-case letters is not a directive; write //pgflow:step`,
				`file.go:22:1: //Pgflow: with upper-case letters is not a directive; write //pgflow:flow`,
			},
		},
		{
			name: "floating directives",
			src: `// Package p is documented.
//
//pgflow:flow in_package_doc
package p

import (
	//pgflow:step on_import
	"context"
)

//pgflow:step detached

func Detached(ctx context.Context) error {
	//pgflow:step in_body
	return nil
}

//pgflow:flow on_var
var V int

const (
	//pgflow:step on_const
	C = 1
)

type T struct {
	//pgflow:flow on_field
	F int
	G int //pgflow:step on_field_comment
}

type U int //pgflow:flow trailing

//pgflow:step bad_and_floating maxAttempts=0

//pgflow:step at_end_of_file
`,
			errs: []string{
				`file.go:3:1: //pgflow:flow must be in the doc comment of a type declaration (directly above it, with no blank line)`,
				`file.go:7:2: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
				`file.go:11:1: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
				`file.go:14:2: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
				`file.go:18:1: //pgflow:flow must be in the doc comment of a type declaration (directly above it, with no blank line)`,
				`file.go:22:2: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
				`file.go:27:2: //pgflow:flow must be in the doc comment of a type declaration (directly above it, with no blank line)`,
				`file.go:29:8: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
				`file.go:32:12: //pgflow:flow must be in the doc comment of a type declaration (directly above it, with no blank line)`,
				`file.go:34:1: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
				`file.go:34:44: invalid maxAttempts "0": must be an integer >= 1`,
				`file.go:36:1: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
			},
		},
		{
			name: "floating in an interface and a function literal",
			src: `package p

type I interface {
	//pgflow:step on_interface_method
	M()
}

var f = func() {
	//pgflow:flow in_func_literal
}
`,
			errs: []string{
				`file.go:4:2: //pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)`,
				`file.go:9:2: //pgflow:flow must be in the doc comment of a type declaration (directly above it, with no blank line)`,
			},
		},
		{
			name: "misplaced on the wrong kind of declaration",
			src: `package p

//pgflow:flow f
func NotAType() {}

//pgflow:step s
type NotAFunc struct{}

type (
	//pgflow:step t
	Grouped int
)
`,
			errs: []string{
				`file.go:3:1: //pgflow:flow must be in the doc comment of a type declaration, not of a function`,
				`file.go:6:1: //pgflow:step must be in the doc comment of a function or method, not of a type`,
				`file.go:10:2: //pgflow:step must be in the doc comment of a function or method, not of a type`,
			},
		},
		{
			name: "two directives of one kind on one declaration",
			src: `package p

//pgflow:flow f
//pgflow:flow g
type In struct{}

//pgflow:step s
//pgflow:step t
func S() {}

//pgflow:step Bad
//pgflow:step u
func (r *R) U() {}

//pgflow:flow h
type (
	//pgflow:flow i
	In2 struct{}
)

//pgflow:flow j
//pgflow:step v
func V() {}
`,
			flows: []flowView{{Type: "In", At: "3:1", Slug: "f@3:15"}, {Type: "In2", At: "15:1", Slug: "h@15:15"}},
			steps: []stepView{{Func: "S", At: "7:1", Slug: "s@7:15"}, {Func: "V", At: "22:1", Slug: "v@22:15"}},
			errs: []string{
				`file.go:4:1: duplicate //pgflow:flow on type In (a type is the input of one flow)`,
				`file.go:8:1: duplicate //pgflow:step on S (a function or method handles one step)`,
				`file.go:11:15: invalid step slug "Bad": slugs match ^[a-z][a-z0-9_]{0,62}$`,
				`file.go:12:1: duplicate //pgflow:step on R.U (a function or method handles one step)`,
				`file.go:17:2: duplicate //pgflow:flow on type In2 (a type is the input of one flow)`,
				`file.go:21:1: //pgflow:flow must be in the doc comment of a type declaration, not of a function`,
			},
		},
		{
			name:  "malformed quoting",
			src:   "package p\n\n//pgflow:step s \"deps=a\nfunc S() {}\n\n//pgflow:step t \"a\"b\nfunc T() {}\n\n//pgflow:step u timeout=\"5m\nfunc U() {}\n\n//pgflow:step v timeout=`5m\nfunc V() {}\n",
			steps: []stepView{{Func: "U", At: "9:1", Slug: "u@9:15"}, {Func: "V", At: "12:1", Slug: "v@12:15"}},
			errs: []string{
				`file.go:3:1: invalid quoted string in //pgflow:step: "deps=a`,
				`file.go:6:1: invalid quoted string in //pgflow:step: b`,
				`file.go:9:25: invalid timeout "\"5m": malformed quoted value`,
				"file.go:12:25: invalid timeout \"`5m\": malformed quoted value",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fset, file := parseSource(t, tt.src)
			flows, steps, errs := annotations.ParseFile(fset, file)
			var gotErrs []string
			for _, e := range errs {
				gotErrs = append(gotErrs, e.Error())
			}
			if diff := cmp.Diff(tt.flows, viewFlows(flows), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("flows (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.steps, viewSteps(steps), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("steps (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.errs, gotErrs, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseFileStructs checks the full structures once, positions included.
func TestParseFileStructs(t *testing.T) {
	src := `package p

//pgflow:flow sites timeout=1m
type In struct{}

//pgflow:step fetch flow=sites deps=prepare fanout startDelay=2s
func (c *Crawler) Fetch() {}
`
	fset, file := parseSource(t, src)
	flows, steps, errs := annotations.ParseFile(fset, file)
	if len(errs) != 0 {
		t.Fatalf("unexpected errors:\n%v", errs)
	}
	pos := func(line, col int) token.Position {
		// Offsets of the lines above: "package p\n\n" is 11 bytes, the flow
		// line 31, the type line 17 and the blank line 1.
		offsets := map[int]int{3: 11, 6: 60}
		return token.Position{Filename: "file.go", Offset: offsets[line] + col - 1, Line: line, Column: col}
	}
	minute, twoSeconds := time.Minute, 2*time.Second
	wantFlows := []*annotations.Flow{{
		Slug:     "sites",
		SlugPos:  pos(3, 15),
		Options:  annotations.Options{Timeout: &minute, TimeoutPos: pos(3, 21)},
		Pos:      pos(3, 1),
		TypeName: "In",
	}}
	wantSteps := []*annotations.Step{{
		Slug:      "fetch",
		SlugPos:   pos(6, 15),
		Flow:      "sites",
		FlowPos:   pos(6, 26),
		Deps:      []annotations.Dep{{Slug: "prepare", Pos: pos(6, 37)}},
		Fanout:    true,
		FanoutPos: pos(6, 45),
		Options:   annotations.Options{StartDelay: &twoSeconds, StartDelayPos: pos(6, 52)},
		Pos:       pos(6, 1),
	}}
	opts := cmp.Options{
		cmpopts.IgnoreFields(annotations.Flow{}, "TypeSpec"),
		cmpopts.IgnoreFields(annotations.Step{}, "FuncDecl"),
	}
	if diff := cmp.Diff(wantFlows, flows, opts); diff != "" {
		t.Errorf("flows (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantSteps, steps, opts); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	if flows[0].TypeSpec != file.Decls[0].(*ast.GenDecl).Specs[0] {
		t.Errorf("Flow.TypeSpec is not the annotated type's spec")
	}
	if steps[0].FuncDecl != file.Decls[1] {
		t.Errorf("Step.FuncDecl is not the annotated function")
	}
}

func TestParseFileNil(t *testing.T) {
	if flows, steps, errs := annotations.ParseFile(token.NewFileSet(), nil); flows != nil || steps != nil || errs != nil {
		t.Errorf("ParseFile(fset, nil) = %v, %v, %v; want nothing", flows, steps, errs)
	}
	// Without the file set, positions are unknown but nothing else changes.
	_, file := parseSource(t, "package p\n\n//pgflow:step s maxAttempts=0\nfunc S() {}\n")
	_, steps, errs := annotations.ParseFile(nil, file)
	if len(steps) != 1 || len(errs) != 1 || errs[0].Error() != `-: invalid maxAttempts "0": must be an integer >= 1` {
		t.Errorf("ParseFile(nil, file) = %v, %v", steps, errs)
	}
}

func TestResolve(t *testing.T) {
	ptr := func(d time.Duration) *time.Duration { return &d }
	five := 5
	seven := 7
	tests := []struct {
		name       string
		step, flow annotations.Options
		want       annotations.ResolvedOptions
	}{
		{
			name: "defaults",
			want: annotations.ResolvedOptions{MaxAttempts: 3, BaseDelay: time.Second, Timeout: 5 * time.Minute, StartDelay: 0},
		},
		{
			name: "flow options override defaults",
			flow: annotations.Options{MaxAttempts: &five, Timeout: ptr(time.Minute)},
			want: annotations.ResolvedOptions{MaxAttempts: 5, BaseDelay: time.Second, Timeout: time.Minute},
		},
		{
			name: "step options override flow options",
			step: annotations.Options{MaxAttempts: &seven, BaseDelay: ptr(2 * time.Second), StartDelay: ptr(time.Hour)},
			flow: annotations.Options{MaxAttempts: &five, BaseDelay: ptr(time.Millisecond), Timeout: ptr(time.Minute)},
			want: annotations.ResolvedOptions{MaxAttempts: 7, BaseDelay: 2 * time.Second, Timeout: time.Minute, StartDelay: time.Hour},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.step.Resolve(tt.flow)); diff != "" {
				t.Errorf("Resolve (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrorList(t *testing.T) {
	l := annotations.ErrorList{
		{Pos: token.Position{Filename: "b.go", Line: 1, Column: 1}, Msg: "x"},
		{Pos: token.Position{Filename: "a.go", Line: 2, Column: 1}, Msg: "y"},
		{Pos: token.Position{Filename: "a.go", Line: 1, Column: 9}, Msg: "z"},
		{Pos: token.Position{Filename: "a.go", Line: 1, Column: 9}, Msg: "w"},
	}
	l.Sort()
	want := "a.go:1:9: w\na.go:1:9: z\na.go:2:1: y\nb.go:1:1: x"
	if got := l.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if l.Err() == nil {
		t.Errorf("Err() of a non-empty list is nil")
	}
	var empty annotations.ErrorList
	if err := empty.Err(); err != nil {
		t.Errorf("Err() of an empty list = %v, want nil", err)
	}
}

func TestParseLine(t *testing.T) {
	tests := []struct {
		text string
		want string // canonical form of the directive, or "" for none
		errs []string
	}{
		{text: "// just prose"},
		{text: "//go:generate stringer"},
		{text: "/* block */"},
		{text: "//pgflow:step a deps=b", want: "//pgflow:step a deps=b"},
		{text: "//pgflow:step a  fanout deps=b timeout=60s maxAttempts=03 flow=f", want: "//pgflow:step a flow=f deps=b fanout maxAttempts=3 timeout=1m0s"},
		{text: "//pgflow:flow f baseDelay=1500ms", want: "//pgflow:flow f baseDelay=1.5s"},
		{text: "//pgflow:step a maxAttempts=0", want: "//pgflow:step a", errs: []string{`1:29: invalid maxAttempts "0": must be an integer >= 1`}},
		{text: "//pgflow:step A", errs: []string{`1:15: invalid step slug "A": slugs match ^[a-z][a-z0-9_]{0,62}$`}},
		{text: "// pgflow:flow f", errs: []string{`1:1: // pgflow: written with a space is not a directive; write //pgflow:flow`}},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			d, errs := annotations.ParseLine(nil, 100, tt.text)
			got := ""
			if d != nil {
				got = d.String()
			}
			if got != tt.want {
				t.Errorf("directive = %q, want %q", got, tt.want)
			}
			var gotErrs []string
			for _, e := range errs {
				gotErrs = append(gotErrs, e.Error())
			}
			if diff := cmp.Diff(tt.errs, gotErrs); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}
