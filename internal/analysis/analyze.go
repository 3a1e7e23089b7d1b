package analysis

import (
	"cmp"
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"slices"
	"strings"
	"time"

	"golang.org/x/tools/go/packages"

	"github.com/pgflow-go/pgflow/annotations"
	"github.com/pgflow-go/pgflow/internal/ir"
)

// analyzer checks one package and solves its flows.
type analyzer struct {
	wd   string
	fset *token.FileSet
	pkg  *packages.Package
	info *types.Info
	errs annotations.ErrorList

	flows      []*flowDecl // source order, duplicates left out
	flowBySlug map[string]*flowDecl
	steps      []*stepDecl // source order
	declared   map[string]declared
}

// flowDecl is a //pgflow:flow directive with what the analysis learns.
type flowDecl struct {
	ann     *annotations.Flow
	obj     *types.TypeName // the input type; nil if it did not type-check
	inputOK bool            // the input type can be used (not generic)
	steps   []*stepDecl     // source order, duplicates left out
	bySlug  map[string]*stepDecl
	order   []*stepDecl // topological order; nil when there is a cycle
	names   *flowNames
}

// stepDecl is a //pgflow:step directive with what the analysis learns.
type stepDecl struct {
	ann  *annotations.Step
	fn   *types.Func // nil if it did not type-check
	sig  *types.Signature
	flow *flowDecl // nil when the flow is unknown
	deps []*stepDecl
	// depsOK reports that every dependency is known.
	depsOK bool
	// resultsOK reports that the results are (T, error) or error; output
	// is then T, or nil for error only.
	resultsOK bool
	output    types.Type
	runParam  bool
	recv      *types.TypeName
}

// declared is a name the package declares at package scope.
type declared struct {
	pos  token.Position
	kind string // "type", "func", "var", "const"
}

// analyze checks the loaded package p, whose test files (parsed apart) are
// tests, and returns its solved form; or nil when it declares no flows and
// no steps, or has mistakes, which are returned sorted.
func analyze(wd string, p *packages.Package, tests []*ast.File) (*ir.Package, annotations.ErrorList) {
	a := &analyzer{
		wd:         wd,
		fset:       p.Fset,
		pkg:        p,
		info:       p.TypesInfo,
		flowBySlug: map[string]*flowDecl{},
		declared:   map[string]declared{},
	}
	out := a.run(tests)
	a.errs.Sort()
	a.errs = slices.CompactFunc(a.errs, func(x, y *annotations.Error) bool { return x.Pos == y.Pos && x.Msg == y.Msg })
	if len(a.errs) > 0 {
		return nil, a.errs
	}
	return out, nil
}

func (a *analyzer) run(tests []*ast.File) *ir.Package {
	files := slices.Clone(a.pkg.Syntax)
	slices.SortFunc(files, func(x, y *ast.File) int {
		return cmp.Compare(a.fset.File(x.Pos()).Name(), a.fset.File(y.Pos()).Name())
	})
	var steps []*annotations.Step
	for _, f := range files {
		flows, ss, errs := annotations.ParseFile(a.fset, f)
		a.addErrors(errs)
		for _, fl := range flows {
			a.addFlow(fl)
		}
		steps = append(steps, ss...)
	}
	a.collectDeclared(tests)
	// Test files are not part of the generated code's package build: a
	// directive there is a mistake. Their other comments are left alone
	// (tests of directives are full of near misses).
	for _, f := range tests {
		flows, ss, _ := annotations.ParseFile(a.fset, f)
		for _, fl := range flows {
			a.errorf(fl.SlugPos, "flow %q is declared in a test file; declare flows in the package's non-test files", fl.Slug)
		}
		for _, s := range ss {
			a.errorf(s.SlugPos, "step %q is declared in a test file; step handlers must be in the package's non-test files", s.Slug)
		}
	}
	if len(a.flowBySlug) == 0 && len(steps) == 0 && len(a.errs) == 0 {
		return nil
	}
	for _, s := range steps {
		a.addStep(s)
	}
	for _, f := range a.flows {
		a.solveGraph(f)
	}
	for _, s := range a.steps {
		a.checkResults(s)
	}
	for _, s := range a.steps {
		a.checkParams(s)
	}
	a.assignNames()
	a.typeErrors()
	if len(a.errs) > 0 {
		return nil
	}
	return a.build()
}

// errorf records a mistake at pos (an absolute position from the file set).
func (a *analyzer) errorf(pos token.Position, format string, args ...any) {
	a.errs = append(a.errs, &annotations.Error{Pos: relPos(a.wd, pos), Msg: fmt.Sprintf(format, args...)})
}

// addErrors records the annotation parser's mistakes.
func (a *analyzer) addErrors(errs annotations.ErrorList) {
	for _, e := range errs {
		a.errorf(e.Pos, "%s", e.Msg)
	}
}

// position converts a token.Pos.
func (a *analyzer) position(p token.Pos) token.Position { return a.fset.Position(p) }

// where formats a position for a message, relative to the working directory.
func (a *analyzer) where(p token.Position) string { return relPos(a.wd, p).String() }

// typeString formats t for messages: the package's own names unqualified,
// others qualified by package name.
func (a *analyzer) typeString(t types.Type) string {
	return types.TypeString(t, func(p *types.Package) string {
		if p == a.pkg.Types {
			return ""
		}
		return p.Name()
	})
}

// addFlow records a //pgflow:flow directive.
func (a *analyzer) addFlow(fl *annotations.Flow) {
	if prev := a.flowBySlug[fl.Slug]; prev != nil {
		a.errorf(fl.SlugPos, "duplicate flow %q (also declared at %s)", fl.Slug, a.where(prev.ann.SlugPos))
		return
	}
	f := &flowDecl{ann: fl, bySlug: map[string]*stepDecl{}}
	a.flows = append(a.flows, f)
	a.flowBySlug[fl.Slug] = f
	a.checkDurations(fl.Options)
	f.obj, _ = a.info.Defs[fl.TypeSpec.Name].(*types.TypeName)
	if fl.TypeSpec.TypeParams != nil {
		a.errorf(a.position(fl.TypeSpec.Name.Pos()), "flow %q: generic input type %s is not supported", fl.Slug, fl.TypeName)
		return
	}
	if f.obj == nil || containsInvalid(f.obj.Type()) {
		return
	}
	f.inputOK = true
	if p := checkJSON(f.obj.Type(), a.typeString); p != nil {
		a.errorf(a.position(fl.TypeSpec.Name.Pos()), "flow %q: input type %s %s", fl.Slug, fl.TypeName, p.describe())
	}
}

// checkDurations reports durations Postgres intervals cannot hold exactly.
func (a *analyzer) checkDurations(o annotations.Options) {
	for _, d := range []struct {
		name string
		val  *time.Duration
		pos  token.Position
	}{
		{"baseDelay", o.BaseDelay, o.BaseDelayPos},
		{"timeout", o.Timeout, o.TimeoutPos},
		{"startDelay", o.StartDelay, o.StartDelayPos},
	} {
		if d.val != nil && *d.val%time.Microsecond != 0 {
			a.errorf(d.pos, "%s=%s is not a whole number of microseconds: Postgres stores intervals to the microsecond", d.name, *d.val)
		}
	}
}

// addStep records a //pgflow:step directive and finds its flow.
func (a *analyzer) addStep(st *annotations.Step) {
	s := &stepDecl{ann: st}
	a.steps = append(a.steps, s)
	a.checkDurations(st.Options)
	s.fn, _ = a.info.Defs[st.FuncDecl.Name].(*types.Func)
	if s.fn != nil {
		s.sig = s.fn.Signature()
	}

	switch {
	case st.Flow != "":
		s.flow = a.flowBySlug[st.Flow]
		if s.flow == nil {
			a.errorf(st.FlowPos, "step %q: unknown flow %q%s", st.Slug, st.Flow, a.flowHint(st.Flow))
		}
	case len(a.flows) == 1:
		s.flow = a.flows[0]
	case len(a.flows) == 0:
		a.errorf(st.SlugPos, "step %q belongs to no flow: the package declares no //pgflow:flow (put one on the flow's input type)", st.Slug)
	default:
		a.errorf(st.SlugPos, "step %q must name its flow with flow=<slug>: the package declares several flows (%s)", st.Slug, a.flowList())
	}
	if f := s.flow; f != nil {
		if prev := f.bySlug[st.Slug]; prev != nil {
			a.errorf(st.SlugPos, "duplicate step %q in flow %q (also declared at %s)", st.Slug, f.ann.Slug, a.where(prev.ann.SlugPos))
			s.flow = nil
		} else {
			f.bySlug[st.Slug] = s
			f.steps = append(f.steps, s)
		}
	}

	if s.sig == nil {
		return
	}
	if s.sig.TypeParams().Len() > 0 {
		a.errorf(a.position(st.FuncDecl.Name.Pos()), "step %q: %s is generic; handlers cannot have type parameters", st.Slug, a.handlerName(s))
		s.sig = nil
		return
	}
	if s.sig.RecvTypeParams().Len() > 0 {
		a.errorf(a.position(st.FuncDecl.Recv.Pos()), "step %q: %s has a generic receiver; handlers cannot be methods of generic types", st.Slug, a.handlerName(s))
		s.sig = nil
		return
	}
	if recv := s.sig.Recv(); recv != nil {
		t := recv.Type()
		if p, ok := t.(*types.Pointer); ok {
			t = p.Elem()
		}
		if n, ok := types.Unalias(t).(*types.Named); ok {
			s.recv = n.Obj()
		} else {
			s.sig = nil // an invalid receiver, reported by the type checker
		}
	}
}

// flowHint suggests a flow for an unknown slug.
func (a *analyzer) flowHint(slug string) string {
	var known []string
	for _, f := range a.flows {
		known = append(known, f.ann.Slug)
	}
	switch {
	case len(known) == 0:
		return ": the package declares no //pgflow:flow"
	case hasSuggestion(slug, known):
		s, _ := suggest(slug, known)
		return fmt.Sprintf(" (did you mean %q?)", s)
	default:
		return fmt.Sprintf(" (the package declares %s)", a.flowList())
	}
}

func (a *analyzer) flowList() string {
	var q []string
	for _, f := range a.flows {
		q = append(q, fmt.Sprintf("%q", f.ann.Slug))
	}
	return strings.Join(q, ", ")
}

// handlerName names a step's handler for messages: F, T.M or (*T).M.
func (a *analyzer) handlerName(s *stepDecl) string {
	d := s.ann.FuncDecl
	if d.Recv == nil || len(d.Recv.List) == 0 || s.fn == nil {
		return d.Name.Name
	}
	recv := s.fn.Signature().Recv()
	if recv == nil {
		return d.Name.Name
	}
	t := recv.Type()
	if p, ok := t.(*types.Pointer); ok {
		return fmt.Sprintf("(*%s).%s", a.typeString(types.Unalias(p.Elem())), d.Name.Name)
	}
	return fmt.Sprintf("%s.%s", a.typeString(types.Unalias(t)), d.Name.Name)
}

// solveGraph resolves a flow's dependencies, checks its shape and orders
// its steps.
func (a *analyzer) solveGraph(f *flowDecl) {
	if len(f.steps) == 0 {
		a.errorf(f.ann.SlugPos, "flow %q has no steps (declare them with //pgflow:step on their handlers)", f.ann.Slug)
		return
	}
	for _, s := range f.steps {
		s.depsOK = true
		for _, d := range s.ann.Deps {
			dep := f.bySlug[d.Slug]
			if dep == nil {
				var others []string // a step cannot depend on itself
				for _, o := range f.steps {
					if o != s {
						others = append(others, o.ann.Slug)
					}
				}
				hint := ""
				if sug, ok := suggest(d.Slug, others); ok {
					hint = fmt.Sprintf(" (did you mean %q?)", sug)
				}
				a.errorf(d.Pos, "step %q depends on unknown step %q of flow %q%s", s.ann.Slug, d.Slug, f.ann.Slug, hint)
				s.depsOK = false
				continue
			}
			s.deps = append(s.deps, dep)
		}
		if s.ann.Fanout && len(s.ann.Deps) > 1 {
			a.errorf(s.ann.FanoutPos, "step %q: fanout steps must have exactly one dependency (or none, to map over the flow input), got %d (%s)",
				s.ann.Slug, len(s.ann.Deps), depList(s.ann.Deps))
		}
	}
	if a.reportCycles(f) {
		return
	}
	f.order = topoOrder(f.steps)
}

func depList(deps []annotations.Dep) string {
	var s []string
	for _, d := range deps {
		s = append(s, d.Slug)
	}
	return strings.Join(s, ", ")
}

// reportCycles reports each cycle among f's steps, once per strongly
// connected component, and whether there was any.
func (a *analyzer) reportCycles(f *flowDecl) bool {
	found := false
	for _, comp := range components(f.steps) {
		if len(comp) < 2 {
			continue // a step cannot list itself (the annotations reject it)
		}
		found = true
		in := map[*stepDecl]bool{}
		for _, s := range comp {
			in[s] = true
		}
		start := comp[0] // earliest in source order
		path := shortestCycle(start, in)
		var names []string
		for _, s := range path {
			names = append(names, s.ann.Slug)
		}
		// Report at the start's deps= entry that begins the cycle.
		pos := start.ann.SlugPos
		for _, d := range start.ann.Deps {
			if d.Slug == path[1].ann.Slug {
				pos = d.Pos
				break
			}
		}
		a.errorf(pos, "cycle: %s", strings.Join(names, " -> "))
	}
	return found
}

// components returns the strongly connected components of the dependency
// graph (Tarjan's algorithm), each sorted in source order, in the source
// order of their first step.
func components(steps []*stepDecl) [][]*stepDecl {
	index := map[*stepDecl]int{}
	for i, s := range steps {
		index[s] = i
	}
	var (
		next  int
		num   = map[*stepDecl]int{}
		low   = map[*stepDecl]int{}
		on    = map[*stepDecl]bool{}
		stack []*stepDecl
		comps [][]*stepDecl
	)
	var visit func(s *stepDecl)
	visit = func(s *stepDecl) {
		num[s], low[s] = next, next
		next++
		stack = append(stack, s)
		on[s] = true
		for _, d := range s.deps {
			if _, seen := num[d]; !seen {
				visit(d)
				low[s] = min(low[s], low[d])
			} else if on[d] {
				low[s] = min(low[s], num[d])
			}
		}
		if low[s] == num[s] {
			var comp []*stepDecl
			for {
				top := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				on[top] = false
				comp = append(comp, top)
				if top == s {
					break
				}
			}
			slices.SortFunc(comp, func(x, y *stepDecl) int { return cmp.Compare(index[x], index[y]) })
			comps = append(comps, comp)
		}
	}
	for _, s := range steps {
		if _, seen := num[s]; !seen {
			visit(s)
		}
	}
	slices.SortFunc(comps, func(x, y []*stepDecl) int { return cmp.Compare(index[x[0]], index[y[0]]) })
	return comps
}

// shortestCycle returns a shortest path start -> ... -> start along
// dependency edges inside the component in; ties go to the dependency
// listed first.
func shortestCycle(start *stepDecl, in map[*stepDecl]bool) []*stepDecl {
	prev := map[*stepDecl]*stepDecl{}
	queue := []*stepDecl{start}
	seen := map[*stepDecl]bool{start: true}
	var last *stepDecl
	for len(queue) > 0 && last == nil {
		s := queue[0]
		queue = queue[1:]
		for _, d := range s.deps {
			if !in[d] {
				continue
			}
			if d == start {
				last = s
				break
			}
			if !seen[d] {
				seen[d] = true
				prev[d] = s
				queue = append(queue, d)
			}
		}
	}
	path := []*stepDecl{start}
	for s := last; s != start; s = prev[s] {
		path = append(path, s)
	}
	slices.Reverse(path[1:])
	return append(path, start)
}

// topoOrder orders acyclic steps so that each comes after its
// dependencies; among the steps ready at once the earliest in source order
// comes first.
func topoOrder(steps []*stepDecl) []*stepDecl {
	remaining := map[*stepDecl]int{}
	dependents := map[*stepDecl][]*stepDecl{}
	for _, s := range steps {
		remaining[s] = len(s.deps)
		for _, d := range s.deps {
			dependents[d] = append(dependents[d], s)
		}
	}
	done := map[*stepDecl]bool{}
	var order []*stepDecl
	for len(order) < len(steps) {
		progressed := false
		for _, s := range steps { // source order: the first ready step wins
			if done[s] || remaining[s] > 0 {
				continue
			}
			done[s] = true
			order = append(order, s)
			for _, x := range dependents[s] {
				remaining[x]--
			}
			progressed = true
			break
		}
		if !progressed {
			return nil // not reached: cycles are reported before
		}
	}
	return order
}
