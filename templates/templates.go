// Package templates holds the text/template files from which pgflowgen
// renders SQL, embedded in the binary.
//
// flows.sql.tmpl renders the migration that defines a package's flows with
// pgflow.create_flow and pgflow.add_step (pgflow_gen.sql beside the
// package's generated Go file). Its data and functions are documented in
// the template itself.
package templates

import "embed"

// FS holds the templates, by file name.
//
//go:embed *.tmpl
var FS embed.FS

// Flows is the name of the template of a package's flow migration.
const Flows = "flows.sql.tmpl"
