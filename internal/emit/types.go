package emit

import (
	"go/types"
	"sort"
	"strconv"
	"strings"

	"github.com/dave/jennifer/jen"
)

// typeExpr spells t as Go source: the package's own names unqualified
// (jen leaves them so in the package's own file), other packages' names
// through jen.Qual, aliases by their own names, as written.
//
//	[]sites.Site, map[string]*pgx.Conn, struct{ N int `json:"n"` }
func typeExpr(t types.Type) jen.Code {
	switch t := t.(type) {
	case *types.Basic:
		if t.Kind() == types.UnsafePointer {
			return jen.Qual("unsafe", "Pointer")
		}
		return jen.Id(t.Name())
	case *types.Alias:
		return withTypeArgs(objExpr(t.Obj()), t.TypeArgs())
	case *types.Named:
		return withTypeArgs(objExpr(t.Obj()), t.TypeArgs())
	case *types.TypeParam:
		return jen.Id(t.Obj().Name())
	case *types.Pointer:
		return jen.Op("*").Add(typeExpr(t.Elem()))
	case *types.Slice:
		return jen.Index().Add(typeExpr(t.Elem()))
	case *types.Array:
		return jen.Index(jen.Lit(int(t.Len()))).Add(typeExpr(t.Elem()))
	case *types.Map:
		return jen.Map(typeExpr(t.Key())).Add(typeExpr(t.Elem()))
	case *types.Chan:
		switch t.Dir() {
		case types.SendOnly:
			return jen.Chan().Op("<-").Add(typeExpr(t.Elem()))
		case types.RecvOnly:
			return jen.Op("<-").Chan().Add(typeExpr(t.Elem()))
		default:
			return jen.Chan().Add(typeExpr(t.Elem()))
		}
	case *types.Struct:
		return jen.StructFunc(func(g *jen.Group) {
			for i := range t.NumFields() {
				f := t.Field(i)
				field := jen.Null()
				if !f.Embedded() {
					field = jen.Id(f.Name())
				}
				field.Add(typeExpr(f.Type()))
				if tag := t.Tag(i); tag != "" {
					field.Add(tagExpr(tag))
				}
				g.Add(field)
			}
		})
	case *types.Interface:
		return jen.InterfaceFunc(func(g *jen.Group) {
			for i := range t.NumEmbeddeds() {
				g.Add(typeExpr(t.EmbeddedType(i)))
			}
			for i := range t.NumExplicitMethods() {
				m := t.ExplicitMethod(i)
				g.Id(m.Name()).Add(signatureExpr(m.Signature()))
			}
		})
	case *types.Signature:
		return jen.Func().Add(signatureExpr(t))
	case *types.Union:
		return jen.UnionFunc(func(g *jen.Group) {
			for i := range t.Len() {
				term := t.Term(i)
				if term.Tilde() {
					g.Op("~").Add(typeExpr(term.Type()))
				} else {
					g.Add(typeExpr(term.Type()))
				}
			}
		})
	}
	// Not reached for the types the analysis accepts.
	return jen.Id(types.TypeString(t, nil))
}

// objExpr names a declared type: error, Site, pgx.Conn.
func objExpr(obj *types.TypeName) *jen.Statement {
	if obj.Pkg() == nil {
		return jen.Id(obj.Name())
	}
	return jen.Qual(obj.Pkg().Path(), obj.Name())
}

// withTypeArgs appends an instantiation's type arguments: Page[Site].
func withTypeArgs(s *jen.Statement, args *types.TypeList) jen.Code {
	if args.Len() == 0 {
		return s
	}
	return s.TypesFunc(func(g *jen.Group) {
		for i := range args.Len() {
			g.Add(typeExpr(args.At(i)))
		}
	})
}

// signatureExpr spells a signature without the func keyword:
// (context.Context, Site) (Analysis, error).
func signatureExpr(sig *types.Signature) *jen.Statement {
	params := jen.ParamsFunc(func(g *jen.Group) {
		for i := range sig.Params().Len() {
			t := sig.Params().At(i).Type()
			if sig.Variadic() && i == sig.Params().Len()-1 {
				g.Op("...").Add(typeExpr(t.(*types.Slice).Elem()))
				continue
			}
			g.Add(typeExpr(t))
		}
	})
	switch res := sig.Results(); res.Len() {
	case 0:
		return params
	case 1:
		return params.Add(typeExpr(res.At(0).Type()))
	default:
		return params.ParamsFunc(func(g *jen.Group) {
			for i := range res.Len() {
				g.Add(typeExpr(res.At(i).Type()))
			}
		})
	}
}

// tagExpr spells a struct tag exactly as the type has it: through jen.Tag
// when that renders it identically (`json:"n"`), else as a quoted string.
func tagExpr(tag string) jen.Code {
	if items, ok := parseTag(tag); ok && renderTag(items) == tag {
		return jen.Tag(items)
	}
	return jen.Lit(tag)
}

// parseTag splits a conventional struct tag into its key:"value" pairs.
func parseTag(tag string) (map[string]string, bool) {
	items := map[string]string{}
	for tag != "" {
		tag = strings.TrimLeft(tag, " ")
		if tag == "" {
			break
		}
		i := strings.IndexByte(tag, ':')
		if i <= 0 || i+1 >= len(tag) || tag[i+1] != '"' {
			return nil, false
		}
		key := tag[:i]
		rest := tag[i+1:]
		j := 1
		for j < len(rest) && rest[j] != '"' {
			if rest[j] == '\\' {
				j++
			}
			j++
		}
		if j >= len(rest) {
			return nil, false
		}
		value, err := strconv.Unquote(rest[:j+1])
		if err != nil {
			return nil, false
		}
		if _, dup := items[key]; dup {
			return nil, false
		}
		items[key] = value
		tag = rest[j+1:]
	}
	return items, len(items) > 0
}

// renderTag renders items the way jen.Tag does (sorted by key).
func renderTag(items map[string]string) string {
	keys := make([]string, 0, len(items))
	for k := range items {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+":"+strconv.Quote(items[k]))
	}
	return strings.Join(parts, " ")
}
