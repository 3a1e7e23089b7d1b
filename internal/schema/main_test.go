package schema_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgflow-go/pgflow/internal/schema"
	"github.com/pgflow-go/pgflow/internal/testdb"
)

func TestMain(m *testing.M) {
	code := testdb.Main(m, testdb.WithTemplate(func(ctx context.Context, connString string) error {
		conn, err := pgx.Connect(ctx, connString)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = schema.Migrate(ctx, conn)
		return err
	}))
	if durable.srv != nil {
		if err := durable.srv.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the benchmark server: %v\n", err)
		}
	}
	os.Exit(code)
}
