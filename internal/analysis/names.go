package analysis

import (
	"go/ast"
	"go/token"
	"go/types"
	"strings"

	"golang.org/x/tools/go/packages"
)

// registerName is the generated registration function.
const registerName = "Register"

// initialisms are the words camelCase spells in capitals, as Go style does.
var initialisms = map[string]bool{
	"acl": true, "api": true, "ascii": true, "cpu": true, "css": true, "dns": true, "eof": true,
	"guid": true, "html": true, "http": true, "https": true, "id": true, "ip": true, "json": true,
	"lhs": true, "qps": true, "ram": true, "rhs": true, "rpc": true, "sla": true, "smtp": true,
	"sql": true, "ssh": true, "tcp": true, "tls": true, "ttl": true, "udp": true, "ui": true,
	"uid": true, "uri": true, "url": true, "utf8": true, "uuid": true, "vm": true, "xml": true,
	"xmpp": true, "xsrf": true, "xss": true,
}

// camelCase turns a slug into an exported Go name: analyze_websites becomes
// AnalyzeWebsites, user_id becomes UserID. Distinct slugs may give the same
// name (a_b and a__b both give AB).
func camelCase(slug string) string {
	var b strings.Builder
	for _, word := range strings.Split(slug, "_") {
		if word == "" {
			continue
		}
		if initialisms[word] {
			b.WriteString(strings.ToUpper(word))
			continue
		}
		b.WriteString(strings.ToUpper(word[:1]) + word[1:])
	}
	return b.String()
}

// exactName is the name used for a step whose camelCase name is shared
// within its flow: the slug with its first letter capitalised, which is
// unique because slugs are.
func exactName(slug string) string {
	return strings.ToUpper(slug[:1]) + slug[1:]
}

// collectDeclared records the names the package declares at package scope:
// those of its type-checked files and those of its in-package test files.
func (a *analyzer) collectDeclared(tests []*ast.File) {
	scope := a.pkg.Types.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		a.declared[name] = declared{pos: a.position(obj.Pos()), kind: objKind(obj)}
	}
	for _, f := range tests {
		if f.Name.Name != a.pkg.Name {
			continue // an external test package
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					a.declare(d.Name, "func")
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch spec := spec.(type) {
					case *ast.TypeSpec:
						a.declare(spec.Name, "type")
					case *ast.ValueSpec:
						kind := "var"
						if d.Tok == token.CONST {
							kind = "const"
						}
						for _, n := range spec.Names {
							a.declare(n, kind)
						}
					}
				}
			}
		}
	}
}

func (a *analyzer) declare(id *ast.Ident, kind string) {
	if id.Name == "_" || id.Name == "init" {
		return
	}
	if _, ok := a.declared[id.Name]; !ok {
		a.declared[id.Name] = declared{pos: a.position(id.Pos()), kind: kind}
	}
}

func objKind(obj types.Object) string {
	switch obj.(type) {
	case *types.TypeName:
		return "type"
	case *types.Func:
		return "func"
	case *types.Const:
		return "const"
	default:
		return "var"
	}
}

// generated is a package-level name the generator declares.
type generated struct {
	flow *flowDecl
	what string // "typed handle", "output type"
}

// assignNames names the generated declarations and step fields, and
// reports names that would collide with the package's or with each other.
func (a *analyzer) assignNames() {
	if len(a.flows) == 0 {
		return
	}
	if d, ok := a.declared[registerName]; ok {
		a.errorf(d.pos, "%s %s collides with the generated function %s that registers this package's handlers; rename it", d.kind, registerName, registerName)
	}
	taken := map[string]generated{}
	for _, f := range a.flows {
		f.names = &flowNames{}
		v := camelCase(f.ann.Slug)
		f.names.varName, f.names.outputName = v, v+"Output"
		for _, n := range []struct{ name, what string }{{f.names.varName, "typed handle"}, {f.names.outputName, "output type"}} {
			if d, ok := a.declared[n.name]; ok {
				a.errorf(f.ann.SlugPos, "flow %q: the generated %s %s collides with %s %s declared at %s; rename it or choose another flow slug",
					f.ann.Slug, n.what, n.name, d.kind, n.name, a.where(d.pos))
				continue
			}
			if n.name == registerName {
				a.errorf(f.ann.SlugPos, "flow %q: the generated %s %s collides with the generated function %s; choose another flow slug",
					f.ann.Slug, n.what, n.name, registerName)
				continue
			}
			if g, ok := taken[n.name]; ok {
				a.errorf(f.ann.SlugPos, "flow %q: the generated %s %s collides with the %s of flow %q (declared at %s); choose another flow slug",
					f.ann.Slug, n.what, n.name, g.what, g.flow.ann.Slug, a.where(g.flow.ann.SlugPos))
				continue
			}
			taken[n.name] = generated{flow: f, what: n.what}
		}

		// Step fields: camelCase, unless two steps share it.
		count := map[string]int{}
		for _, s := range f.steps {
			count[camelCase(s.ann.Slug)]++
		}
		f.names.fields = map[*stepDecl]string{}
		for _, s := range f.steps {
			name := camelCase(s.ann.Slug)
			if count[name] > 1 {
				name = exactName(s.ann.Slug)
			}
			f.names.fields[s] = name
		}
	}
}

// flowNames holds the names chosen for a flow and its steps.
type flowNames struct {
	varName, outputName string
	fields              map[*stepDecl]string
}

// generatedNames lists the package-level names the generator declares.
func (a *analyzer) generatedNames() map[string]bool {
	names := map[string]bool{}
	if len(a.flows) == 0 {
		return names
	}
	names[registerName] = true
	for _, f := range a.flows {
		if f.names != nil {
			names[f.names.varName] = true
			names[f.names.outputName] = true
		}
	}
	return names
}

// typeErrors reports the package's load and type errors, except those that
// only say a generated name is undefined: the generated file is left out
// while loading, and the package's own code may use what it declares.
func (a *analyzer) typeErrors() {
	gen := a.generatedNames()
	for _, e := range a.pkg.TypeErrors {
		if name, ok := strings.CutPrefix(e.Msg, "undefined: "); ok && gen[name] {
			continue
		}
		a.errorf(e.Fset.Position(e.Pos), "%s", e.Msg)
	}
	for _, e := range a.pkg.Errors {
		switch {
		case e.Kind == packages.TypeError: // also in TypeErrors, handled above
			continue
		case e.Kind == packages.ListError && strings.HasPrefix(e.Msg, "# "):
			// The go command's compiler output for the package, built
			// without its generated file: the type checker's errors say
			// the same, with the generated names filtered out.
			continue
		}
		pos, _ := parsePos(e.Pos)
		a.errorf(pos, "%s", e.Msg)
	}
}

// suggest returns the known name closest to s when it is at most two edits
// away, and fewer edits than s has letters; ties go to the earlier name.
func suggest(s string, known []string) (string, bool) {
	best, bestDist := "", min(3, len(s))
	for _, k := range known {
		if d := editDistance(s, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best, best != ""
}

func hasSuggestion(s string, known []string) bool {
	_, ok := suggest(s, known)
	return ok
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
