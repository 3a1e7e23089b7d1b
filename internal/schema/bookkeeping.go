package schema

import _ "embed"

// bookkeepingSQL creates the pgflow schema and the table recording applied
// migrations; it runs under the migration lock.
//
//go:embed bookkeeping.sql
var bookkeepingSQL string
