package sdk

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrShapeChanged reports a flow whose stored shape differs from the code's;
// the error itself is a *ShapeError listing the differences.
var ErrShapeChanged = errors.New("pgflow: flow shape changed")

// ShapeError lists every difference between a flow's stored shape and the
// code's. A flow's shape (its steps, their dependencies, which are fanouts)
// cannot change once it exists: a new shape needs a new slug.
type ShapeError struct {
	Flow        string
	Differences []string
}

// Error implements error.
func (e *ShapeError) Error() string {
	return fmt.Sprintf("pgflow: flow %q is stored with another shape than this code has:\n  - %s\n"+
		"a flow's shape cannot change once it exists; give the new shape a new slug (for example %q)",
		e.Flow, strings.Join(e.Differences, "\n  - "), nextSlug(e.Flow))
}

// Is makes errors.Is(err, ErrShapeChanged) work.
func (e *ShapeError) Is(target error) bool { return target == ErrShapeChanged }

var versionSuffix = regexp.MustCompile(`_v(\d+)$`)

// nextSlug suggests a slug for a new version of a flow: x -> x_v2 -> x_v3.
func nextSlug(slug string) string {
	if m := versionSuffix.FindStringSubmatchIndex(slug); m != nil {
		n, _ := strconv.Atoi(slug[m[2]:m[3]])
		return slug[:m[0]] + "_v" + strconv.Itoa(n+1)
	}
	if len(slug) > 60 {
		slug = slug[:60]
	}
	return slug + "_v2"
}

// EnsureFlows makes the database hold the given flows: an absent flow is
// created; an identical one is left alone; changed options are updated; a
// changed shape is a *ShapeError (errors.Is ErrShapeChanged) listing every
// difference. It runs in one transaction under an advisory lock, so many
// workers may call it at once.
func EnsureFlows(ctx context.Context, db TxBeginner, specs ...FlowSpec) error {
	var errs []error
	slugs := make([]string, 0, len(specs))
	for _, s := range specs {
		if err := s.Validate(); err != nil {
			errs = append(errs, err)
		}
		slugs = append(slugs, s.Slug)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return mapError("pgflow: sync flows", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, shapeLockSQL); err != nil {
		return mapError("pgflow: sync flows", err)
	}
	stored, err := readShapes(ctx, tx, slugs)
	if err != nil {
		return err
	}
	for _, spec := range specs {
		old, ok := stored[spec.Slug]
		if !ok {
			if err := createFlow(ctx, tx, spec); err != nil {
				return err
			}
			continue
		}
		if diffs := shapeDiff(old, spec); len(diffs) > 0 {
			errs = append(errs, &ShapeError{Flow: spec.Slug, Differences: diffs})
			continue
		}
		if err := updateOptions(ctx, tx, old, spec); err != nil {
			return err
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := tx.Commit(ctx); err != nil {
		return mapError("pgflow: sync flows", err)
	}
	return nil
}

// readShapes reads the stored flows among slugs. Options come back as the
// spec would hold them: zero where a step inherits.
func readShapes(ctx context.Context, tx pgx.Tx, slugs []string) (map[string]FlowSpec, error) {
	rows, err := tx.Query(ctx, shapesSQL, slugs)
	if err != nil {
		return nil, mapError("pgflow: sync flows: read stored flows", err)
	}
	defer rows.Close()
	out := map[string]FlowSpec{}
	for rows.Next() {
		var (
			flow                       string
			flowAttempts               int
			flowDelay, flowTimeout     int64
			step, typ                  *string
			attempts                   *int
			delay, timeout, startDelay *int64
			deps                       []string
		)
		if err := rows.Scan(&flow, &flowAttempts, &flowDelay, &flowTimeout, &step, &typ,
			&attempts, &delay, &timeout, &startDelay, &deps); err != nil {
			return nil, mapError("pgflow: sync flows: read stored flows", err)
		}
		spec, ok := out[flow]
		if !ok {
			spec = FlowSpec{Slug: flow, MaxAttempts: flowAttempts, BaseDelay: micros(&flowDelay), Timeout: micros(&flowTimeout)}
		}
		if step != nil {
			st := StepSpec{Slug: *step, Deps: deps, Fanout: *typ == "fanout",
				BaseDelay: micros(delay), Timeout: micros(timeout), StartDelay: micros(startDelay)}
			if attempts != nil {
				st.MaxAttempts = *attempts
			}
			spec.Steps = append(spec.Steps, st)
		}
		out[flow] = spec
	}
	if err := rows.Err(); err != nil {
		return nil, mapError("pgflow: sync flows: read stored flows", err)
	}
	return out, nil
}

func micros(us *int64) time.Duration {
	if us == nil {
		return 0
	}
	return time.Duration(*us) * time.Microsecond
}

// shapeDiff lists how the stored shape differs from the spec's. Options
// are not part of the shape; the order of a step's dependencies neither
// (a handler receives them by slug).
func shapeDiff(stored, spec FlowSpec) []string {
	var diffs []string
	for _, s := range spec.Steps {
		old, ok := stored.Step(s.Slug)
		if !ok {
			diffs = append(diffs, fmt.Sprintf("step %q is new", s.Slug))
			continue
		}
		if old.Fanout != s.Fanout {
			diffs = append(diffs, fmt.Sprintf("step %q is %s in the database and %s in the code", s.Slug, stepKind(old.Fanout), stepKind(s.Fanout)))
		}
		if !sameSet(old.Deps, s.Deps) {
			diffs = append(diffs, fmt.Sprintf("step %q depends on %s in the database and on %s in the code", s.Slug, listOrNone(old.Deps), listOrNone(s.Deps)))
		}
	}
	for _, s := range stored.Steps {
		if _, ok := spec.Step(s.Slug); !ok {
			diffs = append(diffs, fmt.Sprintf("step %q is in the database but not in the code", s.Slug))
		}
	}
	return diffs
}

func stepKind(fanout bool) string {
	if fanout {
		return "a fanout"
	}
	return "a single step"
}

func listOrNone(deps []string) string {
	if len(deps) == 0 {
		return "nothing"
	}
	return strings.Join(deps, ", ")
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func createFlow(ctx context.Context, tx pgx.Tx, spec FlowSpec) error {
	attempts, delay, timeout := spec.resolved()
	if _, err := tx.Exec(ctx, createFlowSQL, spec.Slug, attempts, delay, timeout); err != nil {
		return mapError(fmt.Sprintf("pgflow: create flow %q", spec.Slug), err)
	}
	for _, s := range spec.Steps {
		typ := "single"
		if s.Fanout {
			typ = "fanout"
		}
		deps := s.Deps
		if deps == nil {
			deps = []string{}
		}
		if _, err := tx.Exec(ctx, addStepSQL, spec.Slug, s.Slug, deps, typ,
			nullInt(s.MaxAttempts), nullDuration(s.BaseDelay), nullDuration(s.Timeout), nullDuration(s.StartDelay)); err != nil {
			return mapError(fmt.Sprintf("pgflow: create flow %q: add step %q", spec.Slug, s.Slug), err)
		}
	}
	return nil
}

// updateOptions brings stored options in line with the spec's.
func updateOptions(ctx context.Context, tx pgx.Tx, stored, spec FlowSpec) error {
	attempts, delay, timeout := spec.resolved()
	if stored.MaxAttempts != attempts || stored.BaseDelay != delay || stored.Timeout != timeout {
		if _, err := tx.Exec(ctx, updateFlowOptionsSQL, spec.Slug, attempts, delay, timeout); err != nil {
			return mapError(fmt.Sprintf("pgflow: update options of flow %q", spec.Slug), err)
		}
	}
	for _, s := range spec.Steps {
		old, _ := stored.Step(s.Slug)
		if old.MaxAttempts == s.MaxAttempts && old.BaseDelay == s.BaseDelay && old.Timeout == s.Timeout && old.StartDelay == s.StartDelay {
			continue
		}
		if _, err := tx.Exec(ctx, updateStepOptionsSQL, spec.Slug, s.Slug,
			nullInt(s.MaxAttempts), nullDuration(s.BaseDelay), nullDuration(s.Timeout), nullDuration(s.StartDelay)); err != nil {
			return mapError(fmt.Sprintf("pgflow: update options of step %q of flow %q", s.Slug, spec.Slug), err)
		}
	}
	return nil
}

// nullInt and nullDuration map "unset" (zero) to SQL NULL.
func nullInt(v int) *int {
	if v == 0 {
		return nil
	}
	return &v
}

func nullDuration(d time.Duration) *time.Duration {
	if d == 0 {
		return nil
	}
	return &d
}
