package sdk_test

import (
	"os"
	"testing"

	"github.com/pgflow-go/pgflow/internal/testdb"
)

func TestMain(m *testing.M) {
	os.Exit(testdb.Main(m, testdb.WithTemplate(testdb.Migrated), testdb.WithLeakCheck()))
}
