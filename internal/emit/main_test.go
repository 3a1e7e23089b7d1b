package emit

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/pgflow-go/pgflow/internal/testdb"
	"github.com/pgflow-go/pgflow/sdk"
)

// TestMain gives the tests that apply generated SQL a database with
// pgflow's core schema.
func TestMain(m *testing.M) {
	code := testdb.Main(m, testdb.WithTemplate(func(ctx context.Context, connString string) error {
		conn, err := pgx.Connect(ctx, connString)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		return sdk.Migrate(ctx, conn)
	}))
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
