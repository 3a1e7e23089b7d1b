package annotations

import (
	"errors"
	"fmt"
	"go/ast"
	"go/token"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Option keys, in the order used by messages and by [Directive.String].
const (
	keyFlow        = "flow"
	keyDeps        = "deps"
	keyFanout      = "fanout"
	keyMaxAttempts = "maxAttempts"
	keyBaseDelay   = "baseDelay"
	keyTimeout     = "timeout"
	keyStartDelay  = "startDelay"
)

// knownKeys returns the option keys a directive of kind k accepts.
func knownKeys(k Kind) []string {
	if k == KindFlow {
		return []string{keyMaxAttempts, keyBaseDelay, keyTimeout}
	}
	return []string{keyFlow, keyDeps, keyFanout, keyMaxAttempts, keyBaseDelay, keyTimeout, keyStartDelay}
}

// valueForm returns how the value of key is written, for messages.
func valueForm(key string) string {
	switch key {
	case keyFlow:
		return "<slug>"
	case keyDeps:
		return "<slug>[,<slug>...]"
	case keyMaxAttempts:
		return "N"
	default:
		return "<duration>"
	}
}

// directivePrefix starts every directive.
const directivePrefix = "//pgflow:"

// ParseLine parses the text of one comment, such as "//pgflow:step a deps=b",
// whose first character is at pos in fset. [ParseFile] uses it for every
// comment; it does not check where the comment is.
//
// It returns (nil, nil) when the comment has nothing to do with pgflow. It
// returns errors for a malformed directive and for near misses that Go would
// treat as plain documentation, such as a space after the slashes. The
// directive is returned whenever its name and slug are valid, even with errors
// in other arguments; invalid arguments are then left out of it.
//
// Positions are fset.Position of the offsets from pos, so pos should lie in a
// file of fset. If fset is nil, positions are relative to text instead: Line
// 1, Column the byte offset from pos plus one.
func ParseLine(fset *token.FileSet, pos token.Pos, text string) (*Directive, ErrorList) {
	l := parseLine(positioner{fset: fset, base: pos}, pos, text)
	return l.dir, l.errs
}

// positioner turns a token.Pos into a token.Position.
type positioner struct {
	fset *token.FileSet // nil: positions relative to base
	base token.Pos
}

func (p positioner) position(pos token.Pos) token.Position {
	if p.fset == nil {
		off := int(pos - p.base)
		return token.Position{Offset: off, Line: 1, Column: off + 1}
	}
	return p.fset.Position(pos)
}

// line is the result of parsing one comment.
type line struct {
	ours bool       // the comment is a pgflow directive or a near miss
	kind Kind       // the directive's kind when its name is known
	dir  *Directive // the directive when its name and slug are valid
	errs ErrorList
}

// parseLine parses the comment text that starts at slash.
func parseLine(p positioner, slash token.Pos, text string) line {
	if msg, ok := nearMiss(text); ok {
		return line{ours: true, errs: ErrorList{{Pos: p.position(slash), Msg: msg}}}
	}
	rest, ok := strings.CutPrefix(text, directivePrefix)
	if !ok {
		return line{}
	}
	name := firstWord(rest)
	kind := Kind(name)
	if kind != KindFlow && kind != KindStep {
		return line{ours: true, errs: ErrorList{{Pos: p.position(slash), Msg: unknownDirective(name)}}}
	}
	d, ok := ast.ParseDirective(slash, text)
	if !ok || d.Tool != "pgflow" || d.Name != name {
		// Not reached for the names accepted above; reported rather than
		// trusted should go/ast ever disagree.
		return line{ours: true, kind: kind, errs: ErrorList{{Pos: p.position(slash), Msg: "malformed directive comment " + strconv.Quote(text)}}}
	}
	args, err := d.ParseArgs()
	if err != nil {
		return line{ours: true, kind: kind, errs: ErrorList{{Pos: p.position(slash), Msg: err.Error()}}}
	}
	lp := &lineParser{p: p, text: text, slash: slash, kind: kind, seen: map[string]bool{}}
	dir := lp.parse(args)
	return line{ours: true, kind: kind, dir: dir, errs: lp.errs}
}

// firstWord returns s up to its first space.
func firstWord(s string) string {
	if i := strings.IndexFunc(s, unicode.IsSpace); i >= 0 {
		return s[:i]
	}
	return s
}

// unknownDirective is the message for //pgflow:<name> with an unknown name.
func unknownDirective(name string) string {
	if name == "" {
		return "missing directive name after //pgflow: (write //pgflow:flow or //pgflow:step)"
	}
	msg := fmt.Sprintf("unknown directive //pgflow:%s", name)
	if s, ok := suggest(name, []string{string(KindFlow), string(KindStep)}); ok {
		return msg + fmt.Sprintf(" (did you mean //pgflow:%s?)", s)
	}
	return msg + " (known: //pgflow:flow, //pgflow:step)"
}

// nearMiss reports whether text is a comment that looks like a pgflow
// directive but that Go does not treat as a directive, and returns the
// message for it. Only a name right after "pgflow:" counts, so that prose
// such as "// pgflow: the engine" is left alone.
func nearMiss(text string) (string, bool) {
	var body string
	block := false
	switch {
	case strings.HasPrefix(text, "//"):
		body = text[2:]
	case strings.HasPrefix(text, "/*"):
		body, block = text[2:], true
	default:
		return "", false
	}
	trimmed := strings.TrimLeft(body, " \t")
	const tool = "pgflow:"
	if len(trimmed) <= len(tool) || !strings.EqualFold(trimmed[:len(tool)], tool) {
		return "", false
	}
	name := firstWord(trimmed[len(tool):])
	if block {
		name, _, _ = strings.Cut(name, "*/")
	}
	if name == "" || !isASCIILetter(name[0]) {
		return "", false
	}
	want := directivePrefix + name
	if k := Kind(name); k != KindFlow && k != KindStep {
		if s, ok := suggest(name, []string{string(KindFlow), string(KindStep)}); ok {
			want = directivePrefix + s
		}
	}
	switch {
	case block:
		return fmt.Sprintf("/*%s block comment is not a directive; write %s as a // line comment", trimmed[:len(tool)], want), true
	case len(trimmed) != len(body):
		return fmt.Sprintf("// %s written with a space is not a directive; write %s", trimmed[:len(tool)], want), true
	case trimmed[:len(tool)] != tool:
		return fmt.Sprintf("//%s with upper-case letters is not a directive; write %s", trimmed[:len(tool)], want), true
	}
	return "", false
}

func isASCIILetter(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
}

// span maps byte offsets in an unquoted argument (or value) back to source
// positions. The mapping is exact unless a quoted string contained escapes;
// then every offset maps to the start of the quoted string.
type span struct {
	start token.Pos
	exact bool
}

// at returns the position of byte offset i.
func (s span) at(i int) token.Pos {
	if !s.exact {
		return s.start
	}
	return s.start + token.Pos(i)
}

// lineParser parses the arguments of one directive.
type lineParser struct {
	p     positioner
	text  string    // the whole comment
	slash token.Pos // position of text[0]
	kind  Kind
	slug  string // the slug as written, for the self-dependency check
	seen  map[string]bool
	dir   *Directive
	errs  ErrorList
}

func (lp *lineParser) errorf(pos token.Pos, format string, args ...any) {
	lp.errs = append(lp.errs, &Error{Pos: lp.p.position(pos), Msg: fmt.Sprintf(format, args...)})
}

// parse parses the directive's arguments. It returns nil when the slug is
// missing or invalid.
func (lp *lineParser) parse(args []ast.DirectiveArg) *Directive {
	lp.dir = &Directive{Kind: lp.kind, Pos: lp.p.position(lp.slash)}
	if len(args) == 0 {
		lp.errorf(lp.slash, "missing %s slug (write //pgflow:%s <slug> [options])", lp.kind, lp.kind)
		return nil
	}
	slugOK := false
	if first := args[0]; strings.Contains(first.Arg, "=") {
		lp.errorf(first.Pos, "missing %s slug before %q (the slug comes first: //pgflow:%s <slug> [options])", lp.kind, first.Arg, lp.kind)
	} else {
		args = args[1:]
		lp.slug = first.Arg
		lp.dir.Slug = first.Arg
		lp.dir.SlugPos = lp.p.position(first.Pos)
		if slugOK = ValidSlug(first.Arg); !slugOK {
			lp.errorf(first.Pos, "invalid %s slug %q: slugs match %s", lp.kind, first.Arg, SlugPattern)
		}
	}
	for _, a := range args {
		lp.option(a)
	}
	if !slugOK {
		return nil
	}
	return lp.dir
}

// argSpan returns the span of a's unquoted text.
func (lp *lineParser) argSpan(a ast.DirectiveArg) span {
	off := int(a.Pos - lp.slash)
	if off < 0 || off >= len(lp.text) {
		return span{start: a.Pos}
	}
	raw := lp.text[off:]
	if raw[0] != '"' && raw[0] != '`' {
		return span{start: a.Pos, exact: true}
	}
	q, err := strconv.QuotedPrefix(raw)
	if err != nil || q[1:len(q)-1] != a.Arg {
		return span{start: a.Pos}
	}
	return span{start: a.Pos + 1, exact: true}
}

// option parses one argument after the slug.
func (lp *lineParser) option(a ast.DirectiveArg) {
	key, value, hasValue := strings.Cut(a.Arg, "=")
	known := knownKeys(lp.kind)
	switch {
	case key == "":
		lp.errorf(a.Pos, "invalid argument %q: missing option name before \"=\"", a.Arg)
		return
	case lp.kind == KindFlow && slices.Contains(knownKeys(KindStep), key) && !slices.Contains(known, key):
		lp.errorf(a.Pos, "%s is a step option, not allowed on //pgflow:flow", key)
		return
	case !slices.Contains(known, key):
		msg := fmt.Sprintf("unknown option %q", key)
		if !hasValue {
			msg = fmt.Sprintf("unexpected argument %q", key)
		}
		if s, ok := suggest(key, known); ok {
			lp.errorf(a.Pos, "%s (did you mean %q?)", msg, s)
		} else {
			lp.errorf(a.Pos, "%s (known options: %s)", msg, strings.Join(known, ", "))
		}
		return
	case lp.seen[key]:
		lp.errorf(a.Pos, "duplicate option %q", key)
		return
	}
	lp.seen[key] = true

	if key == keyFanout {
		if hasValue {
			lp.errorf(a.Pos, "fanout is a flag and takes no value (write fanout, not %q)", a.Arg)
			return
		}
		lp.dir.Fanout = true
		lp.dir.FanoutPos = lp.p.position(a.Pos)
		return
	}
	if !hasValue {
		lp.errorf(a.Pos, "%s needs a value (write %s=%s)", key, key, valueForm(key))
		return
	}

	// The value may be quoted on its own, as in timeout="5m".
	vs := lp.argSpan(a)
	vs.start = vs.at(len(key) + 1)
	if value != "" && (value[0] == '"' || value[0] == '`') {
		unquoted, err := strconv.Unquote(value)
		if err != nil {
			lp.errorf(vs.at(0), "invalid %s %q: malformed quoted value", key, value)
			return
		}
		if vs.exact && value[1:len(value)-1] == unquoted {
			vs.start++
		} else {
			vs.exact = false
		}
		value = unquoted
	}

	argPos := lp.p.position(a.Pos)
	opts := &lp.dir.Options
	switch key {
	case keyFlow:
		if !ValidSlug(value) {
			lp.errorf(vs.at(0), "invalid flow slug %q: slugs match %s", value, SlugPattern)
			return
		}
		lp.dir.Flow = value
		lp.dir.FlowPos = lp.p.position(vs.at(0))
	case keyDeps:
		lp.deps(value, vs, a.Pos)
	case keyMaxAttempts:
		if n, ok := lp.maxAttempts(value, vs.at(0)); ok {
			opts.MaxAttempts, opts.MaxAttemptsPos = &n, argPos
		}
	case keyBaseDelay:
		if d, ok := lp.duration(key, value, vs.at(0), false); ok {
			opts.BaseDelay, opts.BaseDelayPos = &d, argPos
		}
	case keyTimeout:
		if d, ok := lp.duration(key, value, vs.at(0), false); ok {
			opts.Timeout, opts.TimeoutPos = &d, argPos
		}
	case keyStartDelay:
		if d, ok := lp.duration(key, value, vs.at(0), true); ok {
			opts.StartDelay, opts.StartDelayPos = &d, argPos
		}
	}
}

// deps parses the value of deps=. argPos is the position of the argument.
func (lp *lineParser) deps(value string, vs span, argPos token.Pos) {
	if value == "" {
		lp.errorf(argPos, "empty deps (write deps=%s)", valueForm(keyDeps))
		return
	}
	seen := map[string]bool{}
	off := 0
	elems := strings.Split(value, ",")
	for i, s := range elems {
		start := off
		pos := vs.at(start)
		off += len(s) + 1
		switch {
		case s == "" && i == len(elems)-1:
			lp.errorf(vs.at(start-1), "trailing comma in deps %q (write the list without spaces, as deps=a,b)", value)
		case s == "":
			lp.errorf(pos, "empty element in deps %q", value)
		case !ValidSlug(s):
			lp.errorf(pos, "invalid dependency slug %q: slugs match %s", s, SlugPattern)
		case seen[s]:
			lp.errorf(pos, "duplicate dependency %q", s)
		case s == lp.slug:
			lp.errorf(pos, "step %q depends on itself", s)
		default:
			seen[s] = true
			lp.dir.Deps = append(lp.dir.Deps, Dep{Slug: s, Pos: lp.p.position(pos)})
		}
	}
}

// maxAttempts parses the value of maxAttempts=.
func (lp *lineParser) maxAttempts(value string, pos token.Pos) (int, bool) {
	n, err := strconv.ParseInt(value, 10, 64)
	switch {
	case err == nil && n >= 1 && n <= MaxAttemptsLimit:
		return int(n), true
	case err == nil && n > MaxAttemptsLimit,
		errors.Is(err, strconv.ErrRange) && !strings.HasPrefix(value, "-"):
		lp.errorf(pos, "invalid maxAttempts %q: must be at most %d", value, MaxAttemptsLimit)
	default:
		lp.errorf(pos, "invalid maxAttempts %q: must be an integer >= 1", value)
	}
	return 0, false
}

// duration parses the value of a duration option; zero is allowed only when
// zeroOK is set.
func (lp *lineParser) duration(key, value string, pos token.Pos, zeroOK bool) (time.Duration, bool) {
	d, err := time.ParseDuration(value)
	switch {
	case err != nil:
		lp.errorf(pos, "invalid %s %q: not a Go duration (e.g. 30s, 5m)", key, value)
	case zeroOK && d < 0:
		lp.errorf(pos, "invalid %s %q: must not be negative", key, value)
	case !zeroOK && d <= 0:
		lp.errorf(pos, "invalid %s %q: must be positive", key, value)
	default:
		return d, true
	}
	return 0, false
}
