package emit

import (
	"bytes"
	"go/token"
	"go/types"
	"strings"
	"testing"
	"time"

	"github.com/dave/jennifer/jen"
	"github.com/google/go-cmp/cmp"

	"github.com/pgflow-go/pgflow/internal/ir"
	"github.com/pgflow-go/pgflow/sdk"
)

// The package the fragments are rendered in, and some types.
const testPath = "github.com/example/sites"

var (
	sitesPkg = types.NewPackage(testPath, "sites")
	geoPkg   = types.NewPackage("github.com/example/geo", "geo")
	pgxPkg   = types.NewPackage("github.com/jackc/pgx/v5", "pgx")

	ctxType  = named(types.NewPackage("context", "context"), "Context", types.NewInterfaceType(nil, nil).Complete())
	errType  = types.Universe.Lookup("error").Type()
	anyType  = types.Universe.Lookup("any").Type()
	intType  = types.Typ[types.Int]
	strType  = types.Typ[types.String]
	empty    = types.NewStruct(nil, nil)
	input    = named(sitesPkg, "SitesInput", empty)
	site     = named(sitesPkg, "Site", empty)
	analysis = named(sitesPkg, "Analysis", empty)
	summary  = named(sitesPkg, "Summary", empty)
	crawler  = named(sitesPkg, "Crawler", empty)
	point    = named(geoPkg, "Point", empty)
	ident    = named(pgxPkg, "Identifier", types.NewSlice(strType))
)

func named(p *types.Package, name string, under types.Type) *types.Named {
	return types.NewNamed(types.NewTypeName(token.NoPos, p, name, nil), under, nil)
}

func tuple(ts ...types.Type) *types.Tuple {
	vars := make([]*types.Var, len(ts))
	for i, t := range ts {
		vars[i] = types.NewParam(token.NoPos, nil, "", t)
	}
	return types.NewTuple(vars...)
}

func signature(params []types.Type, results ...types.Type) *types.Signature {
	return types.NewSignatureType(nil, nil, nil, tuple(params...), tuple(results...), false)
}

// render renders code in a file of package sites and returns it without
// the file's own lines. kind says how to wrap it: "decl" as is, "expr" as
// the value of a var, "type" as the type of a var, "stmt" in a function
// body.
func render(t *testing.T, kind string, code jen.Code) string {
	t.Helper()
	f := jen.NewFilePathName(testPath, "sites")
	f.ImportName(sdkPath, "sdk")
	f.ImportName(geoPkg.Path(), "geo")
	f.ImportName(pgxPkg.Path(), "pgx")
	switch kind {
	case "expr":
		f.Var().Id("_").Op("=").Add(code)
	case "type":
		f.Var().Id("_").Add(code)
	case "stmt":
		f.Func().Id("_").Params().Block(code)
	default:
		f.Add(code)
	}
	var buf bytes.Buffer
	if err := f.Render(&buf); err != nil {
		t.Fatalf("render: %v", err)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	// Drop the package clause and the imports.
	skip := func() {
		for len(lines) > 0 && lines[0] == "" {
			lines = lines[1:]
		}
	}
	lines = lines[1:] // package sites
	skip()
	switch {
	case len(lines) > 0 && lines[0] == "import (":
		for lines[0] != ")" {
			lines = lines[1:]
		}
		lines = lines[1:]
	case len(lines) > 0 && strings.HasPrefix(lines[0], "import "):
		lines = lines[1:]
	}
	skip()
	out := strings.Join(lines, "\n")
	switch kind {
	case "expr":
		out = strings.TrimPrefix(out, "var _ = ")
	case "type":
		out = strings.TrimPrefix(out, "var _ ")
	case "stmt":
		out = strings.TrimSuffix(strings.TrimPrefix(out, "func _() {\n"), "\n}")
		out = strings.ReplaceAll("\n"+out, "\n\t", "\n")[1:]
	}
	return out
}

func TestDurationExpr(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{time.Second, "time.Second"},
		{5 * time.Minute, "5 * time.Minute"},
		{90 * time.Minute, "90 * time.Minute"},
		{2 * time.Hour, "2 * time.Hour"},
		{1500 * time.Millisecond, "1500 * time.Millisecond"},
		{250 * time.Microsecond, "250 * time.Microsecond"},
		{3 * time.Nanosecond, "3 * time.Nanosecond"},
	}
	for _, tt := range tests {
		if got := render(t, "expr", durationExpr(tt.d)); got != tt.want {
			t.Errorf("durationExpr(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestStepSpecLit(t *testing.T) {
	tests := []struct {
		spec sdk.StepSpec
		want string
	}{
		{sdk.StepSpec{Slug: "prepare_urls"}, `{Slug: "prepare_urls"}`},
		{
			sdk.StepSpec{Slug: "analyze_site", Deps: []string{"prepare_urls"}, Fanout: true, MaxAttempts: 5, Timeout: 30 * time.Second},
			`{Slug: "analyze_site", Deps: []string{"prepare_urls"}, Fanout: true, MaxAttempts: 5, Timeout: 30 * time.Second}`,
		},
		{
			sdk.StepSpec{Slug: "s", Deps: []string{"a", "b"}, BaseDelay: time.Second, StartDelay: time.Minute},
			`{Slug: "s", Deps: []string{"a", "b"}, BaseDelay: time.Second, StartDelay: time.Minute}`,
		},
	}
	for _, tt := range tests {
		got := render(t, "expr", jen.Index().Qual(sdkPath, "StepSpec").Values(stepSpecLit(tt.spec)))
		want := "[]sdk.StepSpec{" + tt.want + "}"
		if got != want {
			t.Errorf("stepSpecLit(%+v) =\n%s\nwant\n%s", tt.spec, got, want)
		}
	}
}

func TestFlowSpecLit(t *testing.T) {
	spec := sdk.FlowSpec{
		Slug: "analyze_websites", MaxAttempts: 3, BaseDelay: time.Second, Timeout: 5 * time.Minute,
		Steps: []sdk.StepSpec{{Slug: "prepare_urls"}, {Slug: "summarize", Deps: []string{"prepare_urls"}}},
	}
	want := `sdk.FlowSpec{
	Slug:        "analyze_websites",
	MaxAttempts: 3,
	BaseDelay:   time.Second,
	Timeout:     5 * time.Minute,
	Steps: []sdk.StepSpec{
		{Slug: "prepare_urls"},
		{Slug: "summarize", Deps: []string{"prepare_urls"}},
	},
}`
	if got := render(t, "expr", flowSpecLit(spec)); got != want {
		t.Errorf("flowSpecLit =\n%s\nwant\n%s", got, want)
	}
}

func TestTypeExpr(t *testing.T) {
	tp := types.NewTypeParam(types.NewTypeName(token.NoPos, geoPkg, "T", nil), anyType)
	page := named(geoPkg, "Page", empty)
	page.SetTypeParams([]*types.TypeParam{tp})
	pageOfPoints, err := types.Instantiate(nil, page, []types.Type{point}, false)
	if err != nil {
		t.Fatal(err)
	}
	points := types.NewAlias(types.NewTypeName(token.NoPos, sitesPkg, "Points", nil), types.NewSlice(point))
	field := func(name string, typ types.Type, embedded bool) *types.Var {
		return types.NewField(token.NoPos, sitesPkg, name, typ, embedded)
	}
	tagged := types.NewStruct(
		[]*types.Var{field("Label", strType, false), field("Point", point, true), field("At", intType, false)},
		[]string{`json:"label" yaml:"label"`, "", `db:"at"  json:"at"`},
	)
	stringer := types.NewInterfaceType([]*types.Func{
		types.NewFunc(token.NoPos, sitesPkg, "String", signature(nil, strType)),
	}, nil).Complete()

	tests := []struct {
		typ  types.Type
		want string
	}{
		{intType, "int"},
		{types.Universe.Lookup("byte").Type(), "byte"},
		{errType, "error"},
		{anyType, "any"},
		{site, "Site"},
		{point, "geo.Point"},
		{ident, "pgx.Identifier"},
		{types.NewPointer(site), "*Site"},
		{types.NewSlice(types.NewPointer(point)), "[]*geo.Point"},
		{types.NewArray(site, 3), "[3]Site"},
		{types.NewMap(strType, types.NewSlice(anyType)), "map[string][]any"},
		{pageOfPoints, "geo.Page[geo.Point]"},
		{points, "Points"},
		{types.NewChan(types.RecvOnly, intType), "<-chan int"},
		{types.NewChan(types.SendOnly, intType), "chan<- int"},
		{signature([]types.Type{ctxType, site}, analysis, errType), "func(context.Context, Site) (Analysis, error)"},
		{stringer, "interface {\n\tString() string\n}"},
		{empty, "struct{}"},
		{tagged, "struct {\n\tLabel string `json:\"label\" yaml:\"label\"`\n\tgeo.Point\n\tAt int \"db:\\\"at\\\"  json:\\\"at\\\"\"\n}"},
	}
	for _, tt := range tests {
		if got := render(t, "type", typeExpr(tt.typ)); got != tt.want {
			t.Errorf("typeExpr(%s) =\n%s\nwant\n%s", tt.typ, got, tt.want)
		}
	}
}

// design is the design's example: prepare_urls -> analyze_site (fanout)
// -> summarize.
func design() *ir.Package {
	f := &ir.Flow{
		Slug:       "analyze_websites",
		Input:      input.Obj(),
		Options:    ir.Options{MaxAttempts: 3, BaseDelay: time.Second, Timeout: 5 * time.Minute},
		VarName:    "AnalyzeWebsites",
		OutputName: "AnalyzeWebsitesOutput",
	}
	prepare := &ir.Step{
		Slug:    "prepare_urls",
		Output:  types.NewSlice(site),
		Field:   "PrepareUrls",
		Handler: &ir.Handler{Name: "PrepareURLs", Sig: signature([]types.Type{ctxType, input}, types.NewSlice(site), errType), RunParam: true},
	}
	analyze := &ir.Step{
		Slug:    "analyze_site",
		Deps:    []*ir.Step{prepare},
		Fanout:  true,
		Options: ir.Options{MaxAttempts: 5, Timeout: 30 * time.Second},
		Output:  analysis,
		Field:   "AnalyzeSite",
		Handler: &ir.Handler{Name: "AnalyzeSite", Sig: signature([]types.Type{ctxType, site}, analysis, errType)},
	}
	summarize := &ir.Step{
		Slug:    "summarize",
		Deps:    []*ir.Step{analyze},
		Output:  summary,
		Field:   "Summarize",
		Handler: &ir.Handler{Name: "Summarize", Sig: signature([]types.Type{ctxType, types.NewSlice(analysis)}, summary, errType)},
	}
	f.Steps = []*ir.Step{prepare, analyze, summarize}
	return &ir.Package{Path: testPath, Name: "sites", Types: sitesPkg, Flows: []*ir.Flow{f}, Declared: map[string]bool{}}
}

// withMethod adds a flow whose handler is an error-only method of Crawler.
func withMethod(pkg *ir.Package) (*ir.Package, *ir.Step) {
	recv := &ir.Receiver{Type: crawler.Obj()}
	step := &ir.Step{
		Slug:    "notify",
		Output:  nil,
		Field:   "Notify",
		Handler: &ir.Handler{Name: "Notify", Recv: recv, Sig: signature([]types.Type{ctxType, input}, errType), RunParam: true},
	}
	pkg.Flows = append(pkg.Flows, &ir.Flow{
		Slug: "ping", Input: input.Obj(), Options: ir.Options{MaxAttempts: 1, BaseDelay: time.Second, Timeout: time.Minute},
		VarName: "Ping", OutputName: "PingOutput", Steps: []*ir.Step{step},
	})
	pkg.Receivers = append(pkg.Receivers, recv)
	return pkg, step
}

func TestOutputStruct(t *testing.T) {
	pkg, _ := withMethod(design())
	g := newGenerator(pkg)
	want := `// AnalyzeWebsitesOutput is the output of a run of flow "analyze_websites": one field per leaf step.
type AnalyzeWebsitesOutput struct {
	Summarize Summary ` + "`json:\"summarize\"`" + `
}`
	if got := render(t, "decl", g.outputStruct(pkg.Flows[0])); got != want {
		t.Errorf("outputStruct =\n%s\nwant\n%s", got, want)
	}
	want = `// PingOutput is the output of a run of flow "ping": one field per leaf step.
type PingOutput struct {
	Notify struct{} ` + "`json:\"notify\"`" + `
}`
	if got := render(t, "decl", g.outputStruct(pkg.Flows[1])); got != want {
		t.Errorf("outputStruct of an error-only leaf =\n%s\nwant\n%s", got, want)
	}
}

func TestFlowVar(t *testing.T) {
	pkg := design()
	g := newGenerator(pkg)
	got := render(t, "decl", g.flowVar(pkg.Flows[0]))
	wantStart := `// AnalyzeWebsites is flow "analyze_websites": start runs with AnalyzeWebsites.Start.
var AnalyzeWebsites = sdk.NewFlow[SitesInput, AnalyzeWebsitesOutput](sdk.FlowSpec{`
	if !strings.HasPrefix(got, wantStart) || !strings.HasSuffix(got, "})") {
		t.Errorf("flowVar =\n%s\nwant it to start with\n%s", got, wantStart)
	}
}

func TestGuards(t *testing.T) {
	pkg, _ := withMethod(design())
	g := newGenerator(pkg)
	want := `// Compile-time guards: if a handler's signature drifts from what was generated, the build fails here.
var (
	_ func(context.Context, SitesInput) ([]Site, error)  = PrepareURLs
	_ func(context.Context, Site) (Analysis, error)      = AnalyzeSite
	_ func(context.Context, []Analysis) (Summary, error) = Summarize
	_ func(*Crawler, context.Context, SitesInput) error  = (*Crawler).Notify
)`
	if got := render(t, "decl", g.guards()); got != want {
		t.Errorf("guards =\n%s\nwant\n%s", got, want)
	}
}

func TestHandlerFuncs(t *testing.T) {
	pkg, notify := withMethod(design())
	g := newGenerator(pkg)
	steps := pkg.Flows[0].Steps
	tests := []struct {
		step *ir.Step
		want string
	}{
		{steps[0], `func(ctx context.Context, t *sdk.Task) (any, error) {
	var run SitesInput
	if err := t.DecodeRunInput(&run); err != nil {
		return nil, err
	}
	return PrepareURLs(ctx, run)
}`},
		{steps[1], `func(ctx context.Context, t *sdk.Task) (any, error) {
	var item Site
	if err := t.DecodeItem(&item); err != nil {
		return nil, err
	}
	return AnalyzeSite(ctx, item)
}`},
		{steps[2], `func(ctx context.Context, t *sdk.Task) (any, error) {
	var deps struct {
		AnalyzeSite []Analysis ` + "`json:\"analyze_site\"`" + `
	}
	if err := t.DecodeDeps(&deps); err != nil {
		return nil, err
	}
	return Summarize(ctx, deps.AnalyzeSite)
}`},
		{notify, `func(ctx context.Context, t *sdk.Task) (any, error) {
	var run SitesInput
	if err := t.DecodeRunInput(&run); err != nil {
		return nil, err
	}
	return nil, crawler.Notify(ctx, run)
}`},
	}
	for _, tt := range tests {
		if got := render(t, "expr", g.handlerFunc(tt.step)); got != tt.want {
			t.Errorf("handlerFunc(%s) =\n%s\nwant\n%s", tt.step.Slug, got, tt.want)
		}
	}
}

func TestHandle(t *testing.T) {
	pkg := design()
	g := newGenerator(pkg)
	f := pkg.Flows[0]
	got := render(t, "stmt", g.handle(f, f.Steps[0]))
	want := `w.Handle(analyzeWebsites, "prepare_urls", sdk.HandlerOptions{RunInput: true}, func(ctx context.Context, t *sdk.Task) (any, error) {`
	if first, _, _ := strings.Cut(got, "\n"); first != want {
		t.Errorf("handle starts with\n%s\nwant\n%s", first, want)
	}
	if got := render(t, "expr", handlerOptions(f.Steps[1])); got != "sdk.HandlerOptions{}" {
		t.Errorf("handlerOptions of a step without run input = %s", got)
	}
	if got := render(t, "stmt", g.specLocal(f)); got != "analyzeWebsites := AnalyzeWebsites.Spec()" {
		t.Errorf("specLocal = %s", got)
	}
}

func TestRegister(t *testing.T) {
	pkg, _ := withMethod(design())
	g := newGenerator(pkg)
	got := render(t, "decl", g.register())
	for _, want := range []string{
		"// Register registers the handlers of this package's flows on w.\n// The handlers that are methods are called on crawler.\nfunc Register(w *sdk.Worker, crawler *Crawler) {\n",
		"\tanalyzeWebsites := AnalyzeWebsites.Spec()\n\tw.Handle(analyzeWebsites, \"prepare_urls\",",
		"\t})\n\n\tping := Ping.Spec()\n\tw.Handle(ping, \"notify\", sdk.HandlerOptions{RunInput: true},",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("register =\n%s\nwant it to contain\n%s", got, want)
		}
	}
}

// TestNames checks that generated names avoid the package's own: imports
// get numbered aliases, Register's parameters and the closures' locals
// other names.
func TestNames(t *testing.T) {
	pkg, notify := withMethod(design())
	pkg.Declared = map[string]bool{"sdk": true, "time": true, "w": true, "crawler": true, "Crawler": true, "SitesInput": true}
	notify.Handler.Name = "run" // a handler named like a closure local
	notify.Handler.Recv = nil
	pkg.Receivers = nil
	g := newGenerator(pkg)
	var imports []string
	for _, imp := range g.imports {
		imports = append(imports, imp.path+"="+imp.name)
	}
	want := []string{"context=context", sdkPath + "=sdk2", "time=time2"}
	if diff := cmp.Diff(want, imports); diff != "" {
		t.Errorf("imports (-want +got):\n%s", diff)
	}
	if g.w != "w2" {
		t.Errorf("Register's worker parameter is %q, want w2", g.w)
	}
	if l := g.locals(notify); l.run != "run2" || l.ctx != "ctx" {
		t.Errorf("locals of a handler named run = %+v, want run2 and ctx", l)
	}
}

func TestLowerCamel(t *testing.T) {
	for in, want := range map[string]string{
		"Crawler": "crawler", "HTTPClient": "httpClient", "URL": "url", "ID": "id",
		"AnalyzeWebsites": "analyzeWebsites", "crawler": "crawler", "UserIDSync": "userIDSync",
	} {
		if got := lowerCamel(in); got != want {
			t.Errorf("lowerCamel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGoIsDeterministic(t *testing.T) {
	pkg, _ := withMethod(design())
	first, err := Go(pkg)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		again, err := Go(pkg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Fatal("Go renders differently on a second call")
		}
	}
	if !bytes.HasPrefix(first, []byte(GoHeader+"\n\n"+buildConstraint+"\n\npackage sites\n")) {
		t.Errorf("Go output starts with\n%s", first[:min(len(first), 200)])
	}
}

func TestSQLInterval(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Second:                        "interval '1 second'",
		5 * time.Minute:                    "interval '300 seconds'",
		1500 * time.Millisecond:            "interval '1 second 500 milliseconds'",
		250 * time.Microsecond:             "interval '250 microseconds'",
		2*time.Second + 1*time.Microsecond: "interval '2 seconds 1 microsecond'",
		0:                                  "interval '0 seconds'",
		292 * 365 * 24 * time.Hour:         "interval '9208512000 seconds'",
		time.Duration(1<<63 - 1).Truncate(time.Microsecond): "interval '9223372036 seconds 854775 microseconds'",
	} {
		if got := sqlInterval(d); got != want {
			t.Errorf("sqlInterval(%s) = %s, want %s", d, got, want)
		}
	}
}

func TestSQLLiteral(t *testing.T) {
	if got := sqlLiteral("it's"); got != "'it''s'" {
		t.Errorf("sqlLiteral = %s", got)
	}
}

func TestSQL(t *testing.T) {
	got, err := SQL(design())
	if err != nil {
		t.Fatal(err)
	}
	want := SQLHeader + `
-- The flows of package github.com/example/sites. Apply after pgflow's core schema (sdk.Migrate or its migrations).
SELECT pgflow.create_flow('analyze_websites', max_attempts => 3, base_delay => interval '1 second', timeout => interval '300 seconds');
SELECT pgflow.add_step('analyze_websites', 'prepare_urls');
SELECT pgflow.add_step('analyze_websites', 'analyze_site', deps => ARRAY['prepare_urls'], step_type => 'fanout', max_attempts => 5, timeout => interval '30 seconds');
SELECT pgflow.add_step('analyze_websites', 'summarize', deps => ARRAY['analyze_site']);
`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("SQL (-want +got):\n%s", diff)
	}
}
