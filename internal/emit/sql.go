package emit

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
	"time"

	"github.com/pgflow-go/pgflow/internal/ir"
	"github.com/pgflow-go/pgflow/sdk"
	"github.com/pgflow-go/pgflow/templates"
)

// sqlTemplate is the template of the flow migration, parsed once.
var sqlTemplate = template.Must(template.New(templates.Flows).
	Funcs(template.FuncMap{"literal": sqlLiteral, "interval": sqlInterval}).
	ParseFS(templates.FS, templates.Flows))

// sqlData is what the flow migration template renders.
type sqlData struct {
	Package string
	Flows   []sdk.FlowSpec
}

// SQL renders the migration that defines pkg's flows (pgflow_gen.sql).
func SQL(pkg *ir.Package) ([]byte, error) {
	var buf bytes.Buffer
	if err := sqlTemplate.Execute(&buf, sqlData{Package: pkg.Path, Flows: Specs(pkg)}); err != nil {
		return nil, fmt.Errorf("rendering the SQL of package %s: %w", pkg.Path, err)
	}
	return buf.Bytes(), nil
}

// sqlLiteral quotes s as a SQL string literal, doubling single quotes.
func sqlLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// sqlInterval renders d as a SQL interval literal, exact to the
// microsecond (finer parts are dropped, as Postgres does): whole seconds,
// then milliseconds or microseconds, e.g. interval '300 seconds' or
// interval '1 second 500 milliseconds'. Only seconds and smaller units are
// used, so the interval compares equal to the one a time.Duration parameter
// gives.
func sqlInterval(d time.Duration) string {
	sign := int64(1)
	if d < 0 {
		sign, d = -1, -d
	}
	secs := int64(d / time.Second)
	micros := int64(d%time.Second) / int64(time.Microsecond)
	var parts []string
	if secs != 0 || micros == 0 {
		parts = append(parts, unit(sign*secs, "second"))
	}
	switch {
	case micros == 0:
	case micros%1000 == 0:
		parts = append(parts, unit(sign*micros/1000, "millisecond"))
	default:
		parts = append(parts, unit(sign*micros, "microsecond"))
	}
	return "interval '" + strings.Join(parts, " ") + "'"
}

// unit formats "1 second", "2 seconds".
func unit(n int64, name string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, name)
	}
	return fmt.Sprintf("%d %ss", n, name)
}
