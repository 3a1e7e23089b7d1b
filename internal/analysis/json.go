package analysis

import (
	"fmt"
	"go/token"
	"go/types"
	"reflect"
)

// jsonProblem says why a type cannot round-trip through encoding/json.
type jsonProblem struct {
	path   string // where inside the checked type, e.g. "SitesInput.Done"; "" for the type itself
	typ    string // the offending type
	reason string
}

// describe completes a message such as "output type X of F ...".
func (p *jsonProblem) describe() string {
	if p.path == "" {
		return fmt.Sprintf("cannot round-trip JSON (%s)", p.reason)
	}
	return fmt.Sprintf("cannot round-trip JSON: %s has type %s (%s)", p.path, p.typ, p.reason)
}

// checkJSON reports the first part of t that encoding/json cannot encode
// and decode back, or nil. It recurses through struct fields (those
// encoding/json sees), slices, arrays, maps and pointers; it accepts
// interfaces and types implementing json.Marshaler and json.Unmarshaler
// (or the encoding.Text pair) without looking inside, and follows each
// declared type once, so recursive types are fine.
func checkJSON(t types.Type, typeString func(types.Type) string) *jsonProblem {
	c := &jsonChecker{typeString: typeString, seen: map[string]bool{}}
	return c.check(t, "")
}

type jsonChecker struct {
	typeString func(types.Type) string
	seen       map[string]bool
}

func (c *jsonChecker) problem(t types.Type, path, reason string) *jsonProblem {
	return &jsonProblem{path: path, typ: c.typeString(t), reason: reason}
}

// check checks t, found at path ("" for the root).
func (c *jsonChecker) check(t types.Type, path string) *jsonProblem {
	t = types.Unalias(t)
	if _, ok := t.Underlying().(*types.Interface); ok {
		return nil
	}
	if _, ok := t.(*types.Pointer); !ok {
		if implementsPair(t, jsonMarshaler, jsonUnmarshaler) || implementsPair(t, textMarshaler, textUnmarshaler) {
			return nil
		}
	}
	if n, ok := t.(*types.Named); ok {
		key := types.TypeString(n, nil)
		if c.seen[key] {
			return nil
		}
		c.seen[key] = true
	}
	sub := func(suffix string) string {
		if path == "" {
			return c.typeString(t) + suffix
		}
		return path + suffix
	}
	switch u := t.Underlying().(type) {
	case *types.Basic:
		switch u.Kind() {
		case types.Complex64, types.Complex128, types.UntypedComplex:
			return c.problem(t, path, "complex numbers cannot be encoded as JSON")
		case types.UnsafePointer:
			return c.problem(t, path, "unsafe.Pointer cannot be encoded as JSON")
		}
	case *types.Chan:
		return c.problem(t, path, "channels cannot be encoded as JSON")
	case *types.Signature:
		return c.problem(t, path, "functions cannot be encoded as JSON")
	case *types.Pointer:
		return c.check(u.Elem(), path)
	case *types.Slice:
		return c.check(u.Elem(), sub("[i]"))
	case *types.Array:
		return c.check(u.Elem(), sub("[i]"))
	case *types.Map:
		if !validMapKey(u.Key()) {
			return c.problem(t, path, "JSON object keys must be strings, integers, or implement encoding.TextMarshaler and encoding.TextUnmarshaler")
		}
		return c.check(u.Elem(), sub("[k]"))
	case *types.Struct:
		for i := range u.NumFields() {
			f := u.Field(i)
			if reflect.StructTag(u.Tag(i)).Get("json") == "-" {
				continue
			}
			if !f.Exported() {
				if !f.Embedded() {
					continue
				}
				ft := types.Unalias(f.Type())
				if p, ok := ft.(*types.Pointer); ok {
					ft = p.Elem()
				}
				if _, ok := ft.Underlying().(*types.Struct); !ok {
					continue // encoding/json ignores unexported embedded non-structs
				}
			}
			if p := c.check(f.Type(), sub("."+f.Name())); p != nil {
				return p
			}
		}
	}
	return nil
}

// validMapKey reports whether encoding/json can use t as an object key both
// ways.
func validMapKey(t types.Type) bool {
	if b, ok := t.Underlying().(*types.Basic); ok {
		if b.Info()&(types.IsString|types.IsInteger) != 0 {
			return true
		}
	}
	return implementsPair(types.Unalias(t), textMarshaler, textUnmarshaler)
}

// implementsPair reports whether t (or *t) marshals with m and *t unmarshals
// with u.
func implementsPair(t types.Type, m, u *types.Interface) bool {
	pt := types.NewPointer(t)
	return (types.Implements(t, m) || types.Implements(pt, m)) && types.Implements(pt, u)
}

var (
	byteSlice = types.NewSlice(types.Universe.Lookup("byte").Type())

	jsonMarshaler   = methodInterface("MarshalJSON", nil, []types.Type{byteSlice, errorType})
	jsonUnmarshaler = methodInterface("UnmarshalJSON", []types.Type{byteSlice}, []types.Type{errorType})
	textMarshaler   = methodInterface("MarshalText", nil, []types.Type{byteSlice, errorType})
	textUnmarshaler = methodInterface("UnmarshalText", []types.Type{byteSlice}, []types.Type{errorType})
)

// methodInterface builds interface{ name(params) results }.
func methodInterface(name string, params, results []types.Type) *types.Interface {
	tuple := func(ts []types.Type) *types.Tuple {
		vars := make([]*types.Var, len(ts))
		for i, t := range ts {
			vars[i] = types.NewParam(token.NoPos, nil, "", t)
		}
		return types.NewTuple(vars...)
	}
	sig := types.NewSignatureType(nil, nil, nil, tuple(params), tuple(results), false)
	return types.NewInterfaceType([]*types.Func{types.NewFunc(token.NoPos, nil, name, sig)}, nil).Complete()
}
