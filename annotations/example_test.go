package annotations_test

import (
	"fmt"
	"go/parser"
	"go/token"
	"log"

	"github.com/pgflow-go/pgflow/annotations"
)

func ExampleParseFile() {
	const src = `package sites

//pgflow:flow analyze_websites maxAttempts=3 timeout=5m
type SitesInput struct{ URLs []string }

//pgflow:step prepare_urls
func PrepareURLs(ctx context.Context, in SitesInput) ([]Site, error)

//pgflow:step analyze_site deps=prepare_urls fanout maxAttempt=5
func AnalyzeSite(ctx context.Context, site Site) (Analysis, error)

// pgflow:step summarize deps=analyze_site
func Summarize(ctx context.Context, results []Analysis) (Summary, error)
`
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "sites.go", src, parser.ParseComments)
	if err != nil {
		log.Fatal(err)
	}
	flows, steps, errs := annotations.ParseFile(fset, file)
	for _, f := range flows {
		opts := f.Options.Resolve(annotations.Options{})
		fmt.Printf("flow %s on type %s: maxAttempts=%d timeout=%s\n", f.Slug, f.TypeName, opts.MaxAttempts, opts.Timeout)
	}
	for _, s := range steps {
		var deps []string
		for _, d := range s.Deps {
			deps = append(deps, d.Slug)
		}
		fmt.Printf("step %s on %s: deps=%v fanout=%t\n", s.Slug, s.FuncDecl.Name.Name, deps, s.Fanout)
	}
	for _, e := range errs {
		fmt.Println(e)
	}
	// Output:
	// flow analyze_websites on type SitesInput: maxAttempts=3 timeout=5m0s
	// step prepare_urls on PrepareURLs: deps=[] fanout=false
	// step analyze_site on AnalyzeSite: deps=[prepare_urls] fanout=true
	// sites.go:9:53: unknown option "maxAttempt" (did you mean "maxAttempts"?)
	// sites.go:12:1: // pgflow: written with a space is not a directive; write //pgflow:step
}

func ExampleOptions_Resolve() {
	d, errs := annotations.ParseLine(nil, 0, "//pgflow:flow f maxAttempts=5 timeout=1m")
	if len(errs) > 0 {
		log.Fatal(errs)
	}
	flow := d.Options
	d, errs = annotations.ParseLine(nil, 0, "//pgflow:step s timeout=30s startDelay=10s")
	if len(errs) > 0 {
		log.Fatal(errs)
	}
	fmt.Printf("%+v\n", d.Options.Resolve(flow))
	// Output:
	// {MaxAttempts:5 BaseDelay:1s Timeout:30s StartDelay:10s}
}
