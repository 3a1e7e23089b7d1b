package analysis

import (
	"fmt"
	"go/token"
	"go/types"
)

// errorType is the predeclared error type.
var errorType = types.Universe.Lookup("error").Type()

// isContext reports whether t is context.Context.
func isContext(t types.Type) bool {
	n, ok := types.Unalias(t).(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == "context" && n.Obj().Name() == "Context"
}

// checkResults checks that a handler returns (T, error) or error, and that
// T can round-trip JSON.
func (a *analyzer) checkResults(s *stepDecl) {
	if s.sig == nil {
		return
	}
	res := s.sig.Results()
	fd := s.ann.FuncDecl
	for i := range res.Len() {
		if containsInvalid(res.At(i).Type()) {
			return // reported by the type checker
		}
	}
	switch {
	case res.Len() == 1 && types.Identical(res.At(0).Type(), errorType):
		s.resultsOK = true
	case res.Len() == 2 && types.Identical(res.At(1).Type(), errorType):
		s.resultsOK = true
		s.output = res.At(0).Type()
		if p := checkJSON(s.output, a.typeString); p != nil {
			a.errorf(a.position(fd.Type.Results.List[0].Type.Pos()), "step %q: output type %s of %s %s",
				s.ann.Slug, a.typeString(s.output), a.handlerName(s), p.describe())
		}
	default:
		pos := fd.Name.Pos()
		if fd.Type.Results != nil {
			pos = fd.Type.Results.Pos()
		}
		got := "nothing"
		if res.Len() > 0 {
			got = a.typeString(res)
		}
		a.errorf(a.position(pos), "step %q: %s must return (T, error) or error, got %s", s.ann.Slug, a.handlerName(s), got)
	}
}

// param is one parameter of a handler, for messages.
type param struct {
	index int // 1-based, ctx is 1
	name  string
	typ   types.Type
	pos   token.Position
}

// params lists a handler's parameters with their positions.
func (a *analyzer) params(s *stepDecl) []param {
	var pos []token.Position
	var names []string
	for _, field := range s.ann.FuncDecl.Type.Params.List {
		if len(field.Names) == 0 {
			pos = append(pos, a.position(field.Type.Pos()))
			names = append(names, "")
			continue
		}
		for _, n := range field.Names {
			pos = append(pos, a.position(n.Pos()))
			names = append(names, n.Name)
		}
	}
	tuple := s.sig.Params()
	out := make([]param, tuple.Len())
	for i := range tuple.Len() {
		out[i] = param{index: i + 1, typ: tuple.At(i).Type()}
		if i < len(pos) {
			out[i].pos, out[i].name = pos[i], names[i]
		}
	}
	return out
}

// label names a parameter for messages: "parameter 2 (results)".
func (p param) label() string {
	if p.name == "" || p.name == "_" {
		return fmt.Sprintf("parameter %d", p.index)
	}
	return fmt.Sprintf("parameter %d (%s)", p.index, p.name)
}

// checkParams checks a handler's parameters against its flow and its
// dependencies' outputs.
func (a *analyzer) checkParams(s *stepDecl) {
	if s.sig == nil {
		return
	}
	fd := s.ann.FuncDecl
	name := a.handlerName(s)
	ps := a.params(s)
	for _, p := range ps {
		if containsInvalid(p.typ) {
			return // reported by the type checker
		}
	}
	if len(ps) == 0 {
		a.errorf(a.position(fd.Type.Params.Pos()), "step %q: %s must take a context.Context as its first parameter", s.ann.Slug, name)
		return
	}
	if !isContext(ps[0].typ) {
		a.errorf(ps[0].pos, "step %q: the first parameter of %s must be a context.Context, got %s", s.ann.Slug, name, a.typeString(ps[0].typ))
		return
	}
	if s.sig.Variadic() {
		last := ps[len(ps)-1]
		a.errorf(last.pos, "step %q: %s is variadic; handlers cannot have variadic parameters", s.ann.Slug, name)
		return
	}
	f := s.flow
	if f == nil || !s.depsOK {
		return // the flow or a dependency is unknown: reported already
	}
	inputs := len(s.ann.Deps)
	if s.ann.Fanout {
		inputs = 1
	}
	switch len(ps) - 1 {
	case inputs:
	case inputs + 1:
		s.runParam = true
	default:
		a.errorf(a.position(fd.Name.Pos()), "step %q: %s has %d parameter%s, want %d or %d: ctx context.Context, optionally the run input%s%s",
			s.ann.Slug, name, len(ps), plural(len(ps)), inputs+1, inputs+2, a.inputType(f), a.expectedInputs(s))
		return
	}
	rest := ps[1:]
	if s.runParam {
		run := rest[0]
		rest = rest[1:]
		if f.inputOK && !types.Identical(run.typ, f.obj.Type()) {
			a.errorf(run.pos, "step %q: the run input %s of %s has type %s, want the flow input type %s",
				s.ann.Slug, run.label(), name, a.typeString(run.typ), a.typeString(f.obj.Type()))
		}
	}
	if s.ann.Fanout {
		a.checkItem(s, rest[0])
		return
	}
	for i, dep := range s.deps {
		if !dep.resultsOK {
			continue
		}
		want := dep.produced()
		p := rest[i]
		if types.Identical(p.typ, want) {
			continue
		}
		a.errorf(p.pos, "step %q: %s of %s has type %s, want %s, the output type of step %q%s",
			s.ann.Slug, p.label(), name, a.typeString(p.typ), a.typeString(want), dep.ann.Slug, dep.outputNote())
	}
}

// produced is the type of the step's output as its dependents and the
// run's output see it: the handler's result type, struct{} for a handler
// that returns only an error (its output is JSON null), and for a fanout
// step the slice of those.
func (s *stepDecl) produced() types.Type {
	t := s.output
	if t == nil {
		t = types.NewStruct(nil, nil)
	}
	if s.ann.Fanout {
		return types.NewSlice(t)
	}
	return t
}

// outputNote explains produced for messages.
func (s *stepDecl) outputNote() string {
	switch {
	case s.ann.Fanout && s.output == nil:
		return " (a fanout step's output is the slice of its handler's results; its handler returns only an error)"
	case s.ann.Fanout:
		return " (a fanout step's output is the slice of its handler's results)"
	case s.output == nil:
		return " (its handler returns only an error)"
	}
	return ""
}

// inputType is " (T)" naming the flow's input type, for messages.
func (a *analyzer) inputType(f *flowDecl) string {
	if !f.inputOK {
		return ""
	}
	return " " + a.typeString(f.obj.Type())
}

// expectedInputs describes the parameters after ctx and the run input.
func (a *analyzer) expectedInputs(s *stepDecl) string {
	switch {
	case s.ann.Fanout:
		return ", then the element to process"
	case len(s.ann.Deps) > 0:
		return fmt.Sprintf(", then the output of each dependency (%s)", depList(s.ann.Deps))
	default:
		return ""
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// checkItem checks a fanout handler's item parameter against the element
// type of the slice it maps over.
func (a *analyzer) checkItem(s *stepDecl, item param) {
	f := s.flow
	name := a.handlerName(s)
	var (
		src  types.Type
		what string
	)
	switch {
	case len(s.deps) == 0:
		if !f.inputOK {
			return
		}
		src, what = f.obj.Type(), "the flow input"
	case len(s.deps) == 1:
		dep := s.deps[0]
		if !dep.resultsOK {
			return
		}
		what = fmt.Sprintf("the output of step %q", dep.ann.Slug)
		if dep.output == nil && !dep.ann.Fanout {
			a.errorf(s.ann.FanoutPos, "step %q fans out over %s, whose handler returns only an error: a fanout maps over a slice", s.ann.Slug, what)
			return
		}
		src = dep.produced()
	default:
		return // several dependencies: reported already
	}
	slice, ok := src.Underlying().(*types.Slice)
	if !ok {
		a.errorf(s.ann.FanoutPos, "step %q fans out over %s, which has type %s, not a slice", s.ann.Slug, what, a.typeString(src))
		return
	}
	if !types.Identical(item.typ, slice.Elem()) {
		a.errorf(item.pos, "step %q: the item %s of %s has type %s, want %s, the element type of %s (%s)",
			s.ann.Slug, item.label(), name, a.typeString(item.typ), a.typeString(slice.Elem()), a.typeString(src), what)
	}
}

// containsInvalid reports whether t has an invalid type anywhere (one the
// type checker could not resolve and has reported).
func containsInvalid(t types.Type) bool {
	seen := map[types.Type]bool{}
	var walk func(t types.Type) bool
	walk = func(t types.Type) bool {
		if t == nil {
			return false
		}
		if seen[t] {
			return false
		}
		seen[t] = true
		switch t := t.(type) {
		case *types.Basic:
			return t.Kind() == types.Invalid
		case *types.Alias:
			return walk(types.Unalias(t))
		case *types.Named:
			return false // declared types are checked where they are declared
		case *types.Pointer:
			return walk(t.Elem())
		case *types.Slice:
			return walk(t.Elem())
		case *types.Array:
			return walk(t.Elem())
		case *types.Map:
			return walk(t.Key()) || walk(t.Elem())
		case *types.Chan:
			return walk(t.Elem())
		case *types.Struct:
			for i := range t.NumFields() {
				if walk(t.Field(i).Type()) {
					return true
				}
			}
		case *types.Tuple:
			for i := range t.Len() {
				if walk(t.At(i).Type()) {
					return true
				}
			}
		case *types.Signature:
			return walk(t.Params()) || walk(t.Results())
		}
		return false
	}
	return walk(t)
}
