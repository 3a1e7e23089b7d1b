package emit

import (
	"go/token"
	"go/types"
	"slices"
	"strconv"
	"unicode"

	"github.com/pgflow-go/pgflow/internal/ir"
)

// Import paths the generated code always uses.
const (
	sdkPath     = "github.com/pgflow-go/pgflow/sdk"
	contextPath = "context"
	timePath    = "time"
)

// importName is the name the generated file gives an imported package.
type importName struct {
	path, name string
	alias      bool // name differs from the package's own name
}

// namer hands out identifiers that avoid a set of taken names, Go's
// keywords and each other: base, then base2, base3...
type namer struct {
	taken map[string]bool
}

func newNamer(taken ...map[string]bool) *namer {
	n := &namer{taken: map[string]bool{}}
	for _, m := range taken {
		for k := range m {
			n.taken[k] = true
		}
	}
	return n
}

func (n *namer) pick(base string) string {
	name := base
	for i := 2; n.taken[name] || token.IsKeyword(name); i++ {
		name = base + strconv.Itoa(i)
	}
	n.taken[name] = true
	return name
}

// predeclared holds Go's predeclared identifiers (any, error, nil, len...).
var predeclared = func() map[string]bool {
	m := map[string]bool{}
	for _, name := range types.Universe.Names() {
		m[name] = true
	}
	return m
}()

// lowerCamel turns a Go name into an unexported one: Crawler becomes
// crawler, HTTPClient httpClient, URL url.
func lowerCamel(s string) string {
	r := []rune(s)
	n := 0
	for n < len(r) && unicode.IsUpper(r[n]) {
		n++
	}
	if n > 1 && n < len(r) && unicode.IsLower(r[n]) {
		n-- // keep the capital that starts the next word
	}
	for i := range n {
		r[i] = unicode.ToLower(r[i])
	}
	return string(r)
}

// walkTypes calls visit for every declared type t names, including type
// arguments and the types inside composite types. It does not look into
// the underlying types of declared types: the generated code only spells
// their names.
func walkTypes(t types.Type, visit func(*types.TypeName)) {
	switch t := t.(type) {
	case *types.Alias:
		visit(t.Obj())
		walkTypeList(t.TypeArgs(), visit)
	case *types.Named:
		visit(t.Obj())
		walkTypeList(t.TypeArgs(), visit)
	case *types.Pointer:
		walkTypes(t.Elem(), visit)
	case *types.Slice:
		walkTypes(t.Elem(), visit)
	case *types.Array:
		walkTypes(t.Elem(), visit)
	case *types.Map:
		walkTypes(t.Key(), visit)
		walkTypes(t.Elem(), visit)
	case *types.Chan:
		walkTypes(t.Elem(), visit)
	case *types.Struct:
		for i := range t.NumFields() {
			walkTypes(t.Field(i).Type(), visit)
		}
	case *types.Interface:
		for i := range t.NumEmbeddeds() {
			walkTypes(t.EmbeddedType(i), visit)
		}
		for i := range t.NumExplicitMethods() {
			walkTypes(t.ExplicitMethod(i).Type(), visit)
		}
	case *types.Signature:
		walkTypes(t.Params(), visit)
		walkTypes(t.Results(), visit)
	case *types.Tuple:
		for i := range t.Len() {
			walkTypes(t.At(i).Type(), visit)
		}
	case *types.Union:
		for i := range t.Len() {
			walkTypes(t.Term(i).Type(), visit)
		}
	case *types.Basic:
		if t.Kind() == types.UnsafePointer {
			visit(types.Unsafe.Scope().Lookup("Pointer").(*types.TypeName))
		}
	}
}

func walkTypeList(l *types.TypeList, visit func(*types.TypeName)) {
	for i := range l.Len() {
		walkTypes(l.At(i), visit)
	}
}

// emittedTypes lists every type the generated file spells.
func emittedTypes(pkg *ir.Package) []types.Type {
	var ts []types.Type
	for _, f := range pkg.Flows {
		ts = append(ts, f.Input.Type())
		for _, s := range f.Steps {
			ts = append(ts, s.Handler.Sig.Params(), s.Handler.Sig.Results())
		}
	}
	for _, r := range pkg.Receivers {
		ts = append(ts, r.Type.Type())
	}
	return ts
}

// planImports names every package the generated file imports. Names are
// the packages' own, unless taken by a package-level name or an earlier
// import (by path order): then they get a number (sdk2).
func planImports(pkg *ir.Package, taken map[string]bool) []importName {
	names := map[string]string{contextPath: "context", timePath: "time", sdkPath: "sdk"}
	for _, t := range emittedTypes(pkg) {
		walkTypes(t, func(obj *types.TypeName) {
			if p := obj.Pkg(); p != nil && p.Path() != pkg.Path {
				names[p.Path()] = p.Name()
			}
		})
	}
	paths := make([]string, 0, len(names))
	for p := range names {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	n := newNamer(taken)
	var out []importName
	for _, p := range paths {
		name := n.pick(names[p])
		out = append(out, importName{path: p, name: name, alias: name != names[p]})
	}
	return out
}

// localTypeNames lists the package's own type names t spells.
func localTypeNames(pkg *ir.Package, t types.Type) map[string]bool {
	names := map[string]bool{}
	walkTypes(t, func(obj *types.TypeName) {
		if obj.Pkg() != nil && obj.Pkg().Path() == pkg.Path {
			names[obj.Name()] = true
		}
	})
	return names
}
