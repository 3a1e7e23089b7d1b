package emit

import (
	"os"
	"testing"

	"github.com/pgflow-go/pgflow/internal/testdb"
)

// TestMain gives the tests that apply generated SQL a database with
// pgflow's core schema.
func TestMain(m *testing.M) {
	os.Exit(testdb.Main(m, testdb.WithTemplate(testdb.Migrated), testdb.WithLeakCheck()))
}
