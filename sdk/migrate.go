package sdk

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgflow-go/pgflow/internal/schema"
)

// TxBeginner is what Migrate needs: a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// ErrSchemaTooNew reports a database whose pgflow schema was installed by a
// newer version of pgflow than this one; upgrade before running against it.
var ErrSchemaTooNew = schema.ErrSchemaTooNew

// Migrate installs or upgrades the pgflow core schema (the pgflow schema in
// the database db points to). It applies the embedded migrations the
// database lacks, in one transaction under an advisory lock, so it is
// idempotent and safe to call from many processes at once. A database
// migrated by a newer pgflow is refused with ErrSchemaTooNew.
func Migrate(ctx context.Context, db TxBeginner) error {
	_, err := schema.Migrate(ctx, db)
	return err
}

// SchemaVersion is the newest schema version this package installs.
func SchemaVersion() int {
	return schema.LatestVersion()
}

// checkSchema refuses a database without the pgflow schema, or with one
// older or newer than this package's (a worker calls functions of the
// latest version).
func checkSchema(ctx context.Context, db interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) error {
	v, err := schema.Version(ctx, db)
	switch {
	case err != nil:
		return err
	case v == 0:
		return ErrSchemaMissing
	case v < schema.LatestVersion():
		return fmt.Errorf("%w: the database is at version %d, this worker needs version %d",
			ErrSchemaOutdated, v, schema.LatestVersion())
	case v > schema.LatestVersion():
		return fmt.Errorf("%w: the database is at version %d, this binary knows versions 1 to %d; upgrade pgflow",
			ErrSchemaTooNew, v, schema.LatestVersion())
	}
	return nil
}
