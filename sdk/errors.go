package sdk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound reports an unknown run or flow.
	ErrNotFound = errors.New("pgflow: not found")
	// ErrRunFailed reports a run that ended because a step failed.
	ErrRunFailed = errors.New("pgflow: run failed")
	// ErrRunCancelled reports a run that was cancelled.
	ErrRunCancelled = errors.New("pgflow: run cancelled")
	// ErrInvalidInput reports an input the flow cannot take (for example a
	// value that is not a JSON array for a flow whose first step is a fanout).
	ErrInvalidInput = errors.New("pgflow: invalid input")
	// ErrSchemaMissing reports a database without the pgflow schema; call
	// Migrate first.
	ErrSchemaMissing = errors.New("pgflow: schema not installed (call sdk.Migrate)")
	// ErrSchemaOutdated reports a database whose pgflow schema is older
	// than the one a worker of this version needs; call Migrate first
	// (workers of the previous version keep working with the new schema).
	ErrSchemaOutdated = errors.New("pgflow: schema older than this worker needs (call sdk.Migrate)")
)

// RunError describes a run that did not complete. It matches ErrRunFailed
// or ErrRunCancelled with errors.Is.
type RunError struct {
	RunID  RunID
	Flow   string
	Status RunStatus // RunFailed or RunCancelled
	// Step and TaskIndex name the task whose failure failed the run (for a
	// failed run; TaskIndex is -1 when the step itself failed, e.g. a fanout
	// over a value that is not an array).
	Step      string
	TaskIndex int
	Message   string
}

// Error implements error.
func (e *RunError) Error() string {
	if e.Status == RunCancelled {
		return fmt.Sprintf("pgflow: run %s of flow %q was cancelled", e.RunID, e.Flow)
	}
	where := fmt.Sprintf("step %q", e.Step)
	if e.TaskIndex >= 0 {
		where = fmt.Sprintf("step %q (task %d)", e.Step, e.TaskIndex)
	}
	return fmt.Sprintf("pgflow: run %s of flow %q failed at %s: %s", e.RunID, e.Flow, where, e.Message)
}

// Is makes errors.Is(err, ErrRunFailed) and errors.Is(err, ErrRunCancelled) work.
func (e *RunError) Is(target error) bool {
	switch target {
	case ErrRunFailed:
		return e.Status == RunFailed
	case ErrRunCancelled:
		return e.Status == RunCancelled
	}
	return false
}

// permanentError marks an error that must not be retried.
type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent wraps err so that a handler returning it fails its task at once,
// without the remaining retries (for errors that retrying cannot fix, such
// as invalid input). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err (or an error it wraps) was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// mapError turns errors raised by the pgflow SQL functions (SQLSTATE class
// PF) into this package's errors; other errors are wrapped as they are.
func mapError(op string, err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		msg := pgErr.Message
		switch pgErr.Code {
		case "PF001", "PF004":
			return fmt.Errorf("%s: %s: %w", op, msg, ErrNotFound)
		case "PF002", "22P05", "22021", "22P02", "54000": // invalid input, text Postgres cannot store, too large
			return fmt.Errorf("%s: %s: %w", op, msg, ErrInvalidInput)
		case "3F000", "42883", "42P01": // schema, function or table missing
			if strings.Contains(msg, "pgflow") {
				return fmt.Errorf("%s: %w", op, ErrSchemaMissing)
			}
		}
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// checkJSON rejects what Postgres's jsonb cannot store, before it is sent:
// text that is not JSON or not UTF-8, and the NUL character (\u0000).
func checkJSON(b []byte) error {
	if !utf8.Valid(b) {
		return errors.New("not valid UTF-8")
	}
	if !json.Valid(b) {
		return errors.New("not valid JSON")
	}
	if bytes.Contains(b, []byte(`\u0000`)) && containsNUL(b) {
		return errors.New(`holds the character \u0000, which Postgres cannot store in jsonb`)
	}
	return nil
}

// containsNUL reports whether JSON text holds an escaped NUL character.
func containsNUL(b []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if s, ok := tok.(string); ok && strings.ContainsRune(s, 0) {
			return true
		}
	}
}
