package sdk

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Notification channels of the pgflow schema.
const (
	channelTasks = "pgflow_tasks" // payload: the flow slug whose tasks became claimable
	channelRuns  = "pgflow_runs"  // payload: {"status": ..., "run_ids": [...]} for runs that ended
)

// listener keeps one connection LISTENing on some channels, reconnecting
// with backoff when the database goes away.
type listener struct {
	config   *pgx.ConnConfig
	channels []string
	logger   *slog.Logger
	// onNotify is called for every notification, on the listener's goroutine.
	onNotify func(n *pgconn.Notification)
	// onListen is called each time the channels are (re)subscribed, so that
	// callers can look for what they may have missed while disconnected.
	onListen func()
}

// run listens until ctx is done.
func (l *listener) run(ctx context.Context) {
	b := newBackoff()
	for ctx.Err() == nil {
		err := l.session(ctx, b)
		if ctx.Err() != nil {
			return
		}
		l.logger.Warn("pgflow: notification listener lost its connection; reconnecting", "error", err)
		b.wait(ctx)
	}
}

// session connects, subscribes and delivers notifications until the
// connection fails or ctx is done.
func (l *listener) session(ctx context.Context, b *backoff) error {
	conn, err := pgx.ConnectConfig(ctx, l.config)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	var sql strings.Builder
	for _, ch := range l.channels {
		sql.WriteString("LISTEN " + pgx.Identifier{ch}.Sanitize() + ";")
	}
	if _, err := conn.Exec(ctx, sql.String()); err != nil {
		return err
	}
	b.reset()
	l.onListen()
	for {
		// Wake up now and then to check that the connection still works:
		// a dead peer is not always noticed by a blocked read.
		waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			l.onNotify(n)
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if err := conn.Ping(ctx); err != nil {
				return err
			}
		default:
			return err
		}
	}
}
