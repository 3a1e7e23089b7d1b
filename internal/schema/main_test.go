package schema_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/pgflow-go/pgflow/internal/testdb"
)

func TestMain(m *testing.M) {
	code := testdb.Main(m, testdb.WithTemplate(testdb.Migrated))
	if durable.srv != nil {
		if err := durable.srv.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the benchmark server: %v\n", err)
		}
	}
	os.Exit(code)
}
