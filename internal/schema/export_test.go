package schema

import "context"

// MigrateTo migrates a database to the given version only, as an older
// binary would have: for tests of upgrades.
func MigrateTo(ctx context.Context, db Querier, version int) (int, error) {
	ms, err := Migrations()
	if err != nil {
		return 0, err
	}
	return migrate(ctx, db, ms[:version])
}
