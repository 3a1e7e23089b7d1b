package annotations

import (
	"fmt"
	"go/ast"
	"go/token"
)

// ParseFile returns the flows and steps declared in file, in source order,
// and every mistake in its //pgflow: comments, sorted by position. The file
// must have been parsed with [go/parser.ParseComments] and fset must be the
// file set it was parsed into; positions keep the file name it holds.
//
// Besides the mistakes [ParseLine] reports, ParseFile reports directives that
// are not where they belong (see the package documentation) and a second
// directive of the same kind on one declaration. When there are mistakes, the
// results are a best effort: a directive whose name or slug is invalid, or
// that is misplaced or repeated, is left out, and so are its invalid
// arguments.
func ParseFile(fset *token.FileSet, file *ast.File) (flows []*Flow, steps []*Step, errs ErrorList) {
	if file == nil {
		return nil, nil, nil
	}
	if fset == nil {
		fset = token.NewFileSet()
	}
	fp := &fileParser{p: positioner{fset: fset}, consumed: map[*ast.CommentGroup]bool{}}
	for _, decl := range file.Decls {
		switch d := decl.(type) {
		case *ast.FuncDecl:
			fp.funcDoc(d)
		case *ast.GenDecl:
			if d.Tok == token.TYPE {
				fp.typeDecl(d)
			}
		}
	}
	// Every directive left is in a comment that is no declaration's doc.
	for _, g := range file.Comments {
		if fp.consumed[g] {
			continue
		}
		fp.eachLine(g, func(l line, c *ast.Comment) {
			switch l.kind {
			case KindFlow:
				fp.errorAt(c, "//pgflow:flow must be in the doc comment of a type declaration (directly above it, with no blank line)")
			case KindStep:
				fp.errorAt(c, "//pgflow:step must be in the doc comment of a function or method (directly above it, with no blank line)")
			}
		})
	}
	fp.errs.Sort()
	return fp.flows, fp.steps, fp.errs
}

// fileParser collects the directives of one file.
type fileParser struct {
	p        positioner
	consumed map[*ast.CommentGroup]bool // comment groups already scanned
	flows    []*Flow
	steps    []*Step
	errs     ErrorList
}

// eachLine parses each comment of g, records its errors, and calls f for
// each one that is a pgflow directive or a near miss.
func (fp *fileParser) eachLine(g *ast.CommentGroup, f func(line, *ast.Comment)) {
	if g == nil {
		return
	}
	fp.consumed[g] = true
	for _, c := range g.List {
		l := parseLine(fp.p, c.Slash, c.Text)
		if !l.ours {
			continue
		}
		fp.errs = append(fp.errs, l.errs...)
		f(l, c)
	}
}

// funcDoc scans the doc comment of a function or method.
func (fp *fileParser) funcDoc(d *ast.FuncDecl) {
	seen := false
	fp.eachLine(d.Doc, func(l line, c *ast.Comment) {
		switch l.kind {
		case KindFlow:
			fp.errorAt(c, "//pgflow:flow must be in the doc comment of a type declaration, not of a function")
		case KindStep:
			if seen {
				fp.errorAt(c, fmt.Sprintf("duplicate //pgflow:step on %s (a function or method handles one step)", funcName(d)))
				return
			}
			seen = true
			if dir := l.dir; dir != nil {
				fp.steps = append(fp.steps, &Step{
					Slug:      dir.Slug,
					SlugPos:   dir.SlugPos,
					Flow:      dir.Flow,
					FlowPos:   dir.FlowPos,
					Deps:      dir.Deps,
					Fanout:    dir.Fanout,
					FanoutPos: dir.FanoutPos,
					Options:   dir.Options,
					Pos:       dir.Pos,
					FuncDecl:  d,
				})
			}
		}
	})
}

// typeDecl scans the doc comments of a type declaration: the declaration's
// own, and those of its specs inside a grouped declaration.
func (fp *fileParser) typeDecl(d *ast.GenDecl) {
	seen := map[*ast.TypeSpec]bool{}
	var declTarget *ast.TypeSpec // the type the declaration's doc applies to
	if len(d.Specs) == 1 {
		declTarget, _ = d.Specs[0].(*ast.TypeSpec)
	}
	fp.eachLine(d.Doc, func(l line, c *ast.Comment) {
		if declTarget == nil && l.kind == KindFlow {
			fp.errorAt(c, "//pgflow:flow on a grouped type declaration must be in the doc comment of one of its types")
			return
		}
		fp.typeDirective(l, c, declTarget, seen)
	})
	for _, spec := range d.Specs {
		ts, ok := spec.(*ast.TypeSpec)
		if !ok {
			continue
		}
		fp.eachLine(ts.Doc, func(l line, c *ast.Comment) {
			fp.typeDirective(l, c, ts, seen)
		})
	}
}

// typeDirective handles a directive in a doc comment of type ts.
func (fp *fileParser) typeDirective(l line, c *ast.Comment, ts *ast.TypeSpec, seen map[*ast.TypeSpec]bool) {
	switch l.kind {
	case KindStep:
		fp.errorAt(c, "//pgflow:step must be in the doc comment of a function or method, not of a type")
	case KindFlow:
		if seen[ts] {
			fp.errorAt(c, fmt.Sprintf("duplicate //pgflow:flow on type %s (a type is the input of one flow)", ts.Name.Name))
			return
		}
		seen[ts] = true
		if dir := l.dir; dir != nil {
			fp.flows = append(fp.flows, &Flow{
				Slug:     dir.Slug,
				SlugPos:  dir.SlugPos,
				Options:  dir.Options,
				Pos:      dir.Pos,
				TypeName: ts.Name.Name,
				TypeSpec: ts,
			})
		}
	}
}

// errorAt reports msg at comment c.
func (fp *fileParser) errorAt(c *ast.Comment, msg string) {
	fp.errs = append(fp.errs, &Error{Pos: fp.p.position(c.Slash), Msg: msg})
}

// funcName names a function ("F") or method ("T.M") for messages.
func funcName(d *ast.FuncDecl) string {
	if d.Recv == nil || len(d.Recv.List) == 0 {
		return d.Name.Name
	}
	t := d.Recv.List[0].Type
	for {
		switch x := t.(type) {
		case *ast.StarExpr:
			t = x.X
			continue
		case *ast.ParenExpr:
			t = x.X
			continue
		case *ast.IndexExpr:
			t = x.X
			continue
		case *ast.IndexListExpr:
			t = x.X
			continue
		case *ast.Ident:
			return x.Name + "." + d.Name.Name
		}
		return d.Name.Name
	}
}
