package sdk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
)

// flushLoop reports the results of one queue to the database. It takes
// whatever results are waiting when it is free, so a busy worker reports in
// batches and an idle one reports each result at once. It returns once
// stopFlush is closed and every result is reported, or when ctx is done.
func (s *session) flushLoop(ctx context.Context, results chan result) {
	for {
		var batch []result
		select {
		case r := <-results:
			batch = append(batch, r)
		case <-s.stopFlush:
			for {
				select {
				case r := <-results:
					batch = append(batch, r)
					if len(batch) < maxFlush {
						continue
					}
					s.flush(ctx, batch)
					batch = nil
					continue
				default:
				}
				break
			}
			s.flush(ctx, batch)
			return
		case <-ctx.Done():
			return
		}
	more:
		for len(batch) < maxFlush {
			select {
			case r := <-results:
				batch = append(batch, r)
			default:
				break more
			}
		}
		s.flush(ctx, batch)
	}
}

// flush reports a batch: completions, failures and releases, one statement
// each. While the database is unreachable it retries; results are dropped
// only when ctx ends first (their tasks then go back to the queue when
// their leases expire).
func (s *session) flush(ctx context.Context, batch []result) {
	var completions, failures, releases []result
	for _, r := range batch {
		switch {
		case r.release:
			releases = append(releases, r)
		case r.err != nil:
			failures = append(failures, r)
		default:
			completions = append(completions, r)
		}
	}
	s.send(ctx, completions, s.sendCompletions)
	s.send(ctx, failures, s.sendFailures)
	s.send(ctx, releases, s.sendReleases)
}

// send runs one report statement, retrying while the database is away.
// A statement the database rejects for its data (say, an output Postgres
// cannot store) is split until the offending result is alone; that result
// is then turned into a failure (or, for a failure, its message into a
// plain one) so that it cannot block the others.
func (s *session) send(ctx context.Context, rs []result, exec func(context.Context, []result) error) {
	if len(rs) == 0 {
		return
	}
	b := newBackoff()
	for {
		err := exec(ctx, rs)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			s.logger.Error("pgflow: results not reported before shutdown; their tasks will run again after their leases expire",
				"count", len(rs), "error", err)
			return
		}
		if !isDataError(err) {
			// The database is away, or refuses for a reason that is not the
			// data (a lost schema, a permission): keep the results and retry.
			log := s.logger.Warn
			if !transient(err) {
				log = s.logger.Error
			}
			log("pgflow: reporting results failed; retrying", "count", len(rs), "error", err)
			b.wait(ctx)
			continue
		}
		if len(rs) > 1 {
			half := len(rs) / 2
			s.send(ctx, rs[:half], exec)
			s.send(ctx, rs[half:], exec)
			return
		}
		r := rs[0]
		switch {
		case r.release:
			s.logger.Error("pgflow: releasing a task failed", taskAttrs(r.task, "error", err)...)
		case r.err == nil:
			s.logger.Error("pgflow: the database rejected a task's output; failing the task", taskAttrs(r.task, "error", err)...)
			s.send(ctx, []result{{task: r.task, permanent: true,
				err: fmt.Errorf("the database rejected the output of step %q (task %d): %w", r.task.Step, r.task.Index, err)}},
				s.sendFailures)
		default:
			s.logger.Error("pgflow: reporting a task's failure failed", taskAttrs(r.task, "error", err)...)
			if plain := errors.New("the task failed with an error message the database rejected"); r.err.Error() != plain.Error() {
				s.send(ctx, []result{{task: r.task, permanent: r.permanent, err: plain}}, s.sendFailures)
			}
		}
		return
	}
}

// keys returns the task keys and attempts of a batch, as the SQL wants them.
func keys(rs []result) (runs [][16]byte, steps []string, indexes, attempts []int32) {
	runs, steps = make([][16]byte, len(rs)), make([]string, len(rs))
	indexes, attempts = make([]int32, len(rs)), make([]int32, len(rs))
	for i, r := range rs {
		runs[i], steps[i] = [16]byte(r.task.RunID), r.task.Step
		indexes[i], attempts[i] = int32(r.task.Index), int32(r.task.Attempt)
	}
	return runs, steps, indexes, attempts
}

// sendCompletions reports completions. While the worker claims, the same
// round trip and transaction also claim tasks for the free slots: a
// completion that queues the next step's task hands it straight back to
// this worker, without waiting for the notification and a separate claim
// (which is then sent only when the claim leaves queued tasks behind, so
// that no worker is woken for a task already taken).
func (s *session) sendCompletions(ctx context.Context, rs []result) error {
	runs, steps, indexes, attempts := keys(rs)
	outputs := make([]string, len(rs))
	for i, r := range rs {
		outputs[i] = string(r.output)
	}
	args := []any{runs, steps, indexes, attempts, outputs}
	var (
		applied int
		err     error
	)
	n := s.reserveForReport()
	if n > 0 {
		applied, err = s.completeAndClaim(ctx, args, n)
	}
	// Alone when no slot is free, and again alone when the statement was
	// refused for its data: the completion is blamed for such an error
	// only when it gets the error without the claim.
	if n == 0 || (err != nil && isDataError(err)) {
		err = s.w.pool.QueryRow(ctx, completeSQL, args...).Scan(&applied)
	}
	if err == nil && applied < len(rs) {
		s.logger.Debug("pgflow: late results fenced out", "count", len(rs)-applied)
	}
	return err
}

// completeAndClaim reports completions (args of completeSQL) and claims up
// to n tasks (n slots reserved) in one statement, complete_and_claim: when
// either part fails, neither takes effect. It starts the claimed tasks and
// returns how many completions applied.
func (s *session) completeAndClaim(ctx context.Context, args []any, n int) (int, error) {
	var applied int
	rows, err := s.w.pool.Query(ctx, completeClaimSQL, append(slices.Clone(args), s.claimArgs(n)...)...)
	var claimed []claimed
	if err == nil {
		claimed, err = scanClaimed(rows, n, &applied)
	}
	if err != nil {
		claimed = nil
	}
	s.startClaimed(claimed, n)
	if len(claimed) == n {
		signal(s.wake) // more may be waiting
	}
	return applied, err
}

// reserveForReport reserves the free slots for a claim that goes with a
// report; none once the worker has stopped claiming.
func (s *session) reserveForReport() int {
	if !s.claiming.Load() {
		return 0
	}
	return s.reserve(1)
}

func (s *session) sendFailures(ctx context.Context, rs []result) error {
	runs, steps, indexes, attempts := keys(rs)
	messages := make([]string, len(rs))
	permanent := make([]bool, len(rs))
	for i, r := range rs {
		messages[i] = cleanMessage(r.err.Error())
		permanent[i] = r.permanent
	}
	var applied int
	err := s.w.pool.QueryRow(ctx, failSQL, runs, steps, indexes, attempts, messages, permanent).Scan(&applied)
	if err == nil {
		// The claim loop learns when the retries become claimable.
		s.retried.Store(true)
		signal(s.wake)
	}
	return err
}

func (s *session) sendReleases(ctx context.Context, rs []result) error {
	runs, steps, indexes, attempts := keys(rs)
	var released int
	return s.w.pool.QueryRow(ctx, releaseSQL, runs, steps, indexes, attempts).Scan(&released)
}

// cleanMessage makes an error message storable as Postgres text: valid
// UTF-8, no NUL bytes, bounded length.
func cleanMessage(msg string) string {
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	msg = strings.ReplaceAll(msg, "\x00", `\x00`)
	if len(msg) > maxErrorMessage {
		cut := maxErrorMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "… (truncated)"
	}
	return msg
}

// isDataError reports an error about the data sent rather than the connection.
func isDataError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code[:2] == "22" || pgErr.Code[:2] == "54")
}
