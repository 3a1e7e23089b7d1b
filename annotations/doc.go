// Package annotations parses and validates the //pgflow: directive comments
// that declare flows and steps in plain Go code.
//
// It is the reference for the directive grammar. It works on syntax only
// (go/ast): it knows nothing about types or handler signatures, which the
// generator checks afterwards. Every mistake is reported with its exact
// position, and parsing never stops at the first one.
//
// # Directives
//
// A flow is declared on the type that is the flow's input:
//
//	//pgflow:flow analyze_websites maxAttempts=3 baseDelay=1s timeout=5m
//	type SitesInput struct {
//		URLs []string `json:"urls"`
//	}
//
// A step is declared on the function or method that handles it:
//
//	//pgflow:step prepare_urls
//	func PrepareURLs(ctx context.Context, in SitesInput) ([]Site, error)
//
//	//pgflow:step analyze_site deps=prepare_urls fanout maxAttempts=5 timeout=30s
//	func AnalyzeSite(ctx context.Context, site Site) (Analysis, error)
//
//	//pgflow:step summarize deps=analyze_site
//	func Summarize(ctx context.Context, results []Analysis) (Summary, error)
//
// The forms are:
//
//	//pgflow:flow <slug> [maxAttempts=N] [baseDelay=D] [timeout=D]
//	//pgflow:step <slug> [flow=<slug>] [deps=<slug>[,<slug>...]] [fanout]
//	               [maxAttempts=N] [baseDelay=D] [timeout=D] [startDelay=D]
//
// A directive is one line comment. It is written with no space between "//"
// and "pgflow:", and the directive name follows the colon directly. The slug
// comes first; the other arguments may come in any order, each at most once.
//
// # Placement
//
// //pgflow:flow belongs in the doc comment of a type declaration: the comment
// directly above "type T ...", or, inside a grouped "type ( ... )" block, the
// comment directly above one of its types. //pgflow:step belongs in the doc
// comment of a top-level function or of a method. A directive may share the
// doc comment with prose, before or after it (gofmt moves directives to the
// end of a doc comment). A type declares at most one flow and a function at
// most one step.
//
// A directive anywhere else is an error rather than being ignored: inside a
// function body, on a var or const, on a struct field, or separated from its
// declaration by a blank line (which makes it a free-floating comment). So are
// near misses that Go would silently treat as documentation:
//
//	// pgflow:step s     a space after the slashes
//	/*pgflow:step s*/    a block comment
//	//PGFlow:step s      an upper-case tool name
//
// # Arguments
//
// Arguments are separated by spaces. Each argument may be a bare word, a Go
// double-quoted string or a Go raw (back-quoted) string, as described for
// [go/ast.Directive.ParseArgs]; the unquoted text is what is validated. The
// value of a key=value argument may also be quoted on its own, as in
// timeout="5m".
//
//   - Slugs (the flow's or step's own slug, flow=, and each entry of deps=)
//     match [SlugPattern], ^[a-z][a-z0-9_]{0,62}$: a lower-case letter, then
//     up to 62 lower-case letters, digits or underscores.
//   - flow=<slug> (steps only) names the flow the step belongs to. It may be
//     left out; the generator then uses the package's only flow.
//   - deps=a,b (steps only) lists the steps this step depends on, in order,
//     separated by commas without spaces. The list must not be empty, have
//     empty elements, repeat a step, or name the step itself.
//   - fanout (steps only) is a bare flag: the step runs once per element of
//     its dependency's output (or of the flow input, for a step without
//     dependencies). It takes no value: fanout=true is an error.
//   - maxAttempts=N is how often a task is tried before the step fails: an
//     integer from 1 to [MaxAttemptsLimit].
//   - baseDelay=D is the delay before the first retry; retry n waits 2^(n-1)
//     times baseDelay. It is a positive Go duration such as 500ms, 2s or 1m30s
//     (see [time.ParseDuration]).
//   - timeout=D is how long one attempt may run: a positive Go duration.
//   - startDelay=D (steps only) delays the step's tasks after the step starts:
//     a Go duration that is zero or positive.
//
// # Options and defaults
//
// Options given on a step override those of its flow; options given on
// neither take the defaults [DefaultMaxAttempts], [DefaultBaseDelay],
// [DefaultTimeout] and [DefaultStartDelay]. [Options.Resolve] computes the
// effective values.
//
// # Errors
//
// [ParseFile] returns every mistake in a file as an [ErrorList] sorted by
// position, each printed as "file:line:col: message" with the column of the
// offending argument or value. Unknown directive names and unknown options
// come with a "did you mean" hint when a known name is close.
package annotations
