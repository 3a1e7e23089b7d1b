package sdk

import (
	"context"

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
