package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/config"
	rtsql "github.com/budget-rt/gateway/sql"
)

// Install installs or upgrades the SQL and (re)configures tracking of the
// given tables. Running it again changes nothing that is already right.
func Install(ctx context.Context, conn *pgx.Conn, tracks []config.Track) error {
	// The file holds several statements and its own BEGIN/COMMIT; the simple
	// protocol (no arguments) runs it as psql would.
	if _, err := conn.Exec(ctx, rtsql.Install); err != nil {
		rollback(ctx, conn)
		return fmt.Errorf("install sql: %w", err)
	}
	for _, t := range tracks {
		var cols, settings, batch, key any
		if t.Columns != nil {
			cols = t.Columns
		}
		if t.Settings != nil {
			settings = t.Settings
		}
		if t.BatchEvent != "" {
			batch = t.BatchEvent
		}
		if t.BatchKey != "" {
			key = t.BatchKey
		}
		_, err := conn.Exec(ctx, `SELECT rtgw.track($1::regclass, $2, $3::text[], $4::jsonb, $5, $6)`,
			t.Table, t.Prefix, cols, settings, batch, key)
		if err != nil {
			return fmt.Errorf("track %s: %w", t.Table, err)
		}
	}
	return nil
}

// Uninstall removes every object Install created; the application's tables
// and their data stay.
func Uninstall(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, rtsql.Uninstall); err != nil {
		rollback(ctx, conn)
		return fmt.Errorf("uninstall sql: %w", err)
	}
	return nil
}

// rollback ends the transaction a failed SQL file opened with its BEGIN,
// which would otherwise refuse every later statement on conn.
func rollback(ctx context.Context, conn *pgx.Conn) {
	_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
}

// Tracked returns the tables currently tracked, by their name.
func Tracked(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]config.Track, error) {
	rows, err := q.Query(ctx, `
SELECT tbl::text, prefix, columns, settings, coalesce(batch_event, ''), coalesce(batch_key, '')
FROM rtgw.tracked ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("read tracked tables: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (config.Track, error) {
		var t config.Track
		err := r.Scan(&t.Table, &t.Prefix, &t.Columns, &t.Settings, &t.BatchEvent, &t.BatchKey)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("read tracked tables: %w", err)
	}
	return out, nil
}

// ErrRuleMismatch says a visibility rule cannot be enforced on what the
// table's events carry.
var ErrRuleMismatch = errors.New("visibility rule does not fit the tracked table")

// CheckRules checks that every rule's table is tracked with events that
// carry the rule's column, and without batch deletes (a batch lists keys
// only, so it could not be routed to the right users).
func CheckRules(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, rules []config.Rule) error {
	if len(rules) == 0 {
		return nil
	}
	tracked, err := Tracked(ctx, q)
	if err != nil {
		return err
	}
	byName := map[string]config.Track{}
	for _, t := range tracked {
		byName[TableName(t.Table)] = t
	}
	var errs []error
	for _, r := range rules {
		t, ok := byName[TableName(r.Table)]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%w: %s is not tracked (tracked tables are named as rtgw.tracked shows them)", ErrRuleMismatch, r.Table))
		case t.Columns != nil && !slices.Contains(t.Columns, r.Column):
			errs = append(errs, fmt.Errorf("%w: %s's events do not carry %s; add it to the table's columns", ErrRuleMismatch, r.Table, r.Column))
		case t.BatchEvent != "":
			errs = append(errs, fmt.Errorf("%w: %s sends batch deletes (%s), which list keys only; track it without a batch event", ErrRuleMismatch, r.Table, t.BatchEvent))
		}
	}
	return errors.Join(errs...)
}

// CaptureByDecoding switches the database to capture by logical decoding
// from slot: it creates the pgoutput slot if missing (before the switch, so
// that every transaction after the triggers go is in it) and calls
// rtgw.capture_by. The server needs wal_level = logical, and the role the
// REPLICATION attribute. Running it again changes nothing.
func CaptureByDecoding(ctx context.Context, conn *pgx.Conn, slot string) error {
	// A slot is created outside any transaction that has written.
	_, err := conn.Exec(ctx, `
SELECT pg_create_logical_replication_slot($1, 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
  AND current_setting('wal_level') = 'logical'`, slot)
	if err != nil {
		return fmt.Errorf("create capture slot %s: %w", slot, err)
	}
	if _, err := conn.Exec(ctx, `SELECT rtgw.capture_by('decoding', $1)`, slot); err != nil {
		return fmt.Errorf("switch capture to decoding: %w", err)
	}
	return nil
}

// CaptureByTriggers switches the database back to capture by triggers (the
// default). When it captures by decoding, writers of the tracked tables wait
// while everything committed before the switch is written from the slot
// (seqs follow commit order across the switch); this reads the slot itself
// meanwhile, unless a gateway does, and returns once the slot is dropped.
func CaptureByTriggers(ctx context.Context, conn *pgx.Conn, dbURL string, logger *slog.Logger) error {
	var active bool
	err := conn.QueryRow(ctx, `
SELECT coalesce((SELECT active FROM rtgw.decoding), false) WHERE to_regclass('rtgw.decoding') IS NOT NULL`).Scan(&active)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read capture mode: %w", err)
	}
	if !active {
		return nil
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("open database pool: %w", err)
	}
	defer pool.Close()
	rc, err := ReplicationConfig(dbURL)
	if err != nil {
		return fmt.Errorf("parse database url: %w", err)
	}
	c := &Capture{Pool: pool, Logger: logger, Idle: 100 * time.Millisecond, StatusInterval: 100 * time.Millisecond,
		Connect: func(ctx context.Context) (*pgconn.PgConn, error) { return pgconn.ConnectConfig(ctx, rc) }}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	defer func() { cancel(); <-done }()

	if _, err := conn.Exec(ctx, `SELECT rtgw.capture_by('triggers')`); err != nil {
		return fmt.Errorf("switch capture to triggers: %w", err)
	}
	// The slot's reader (this one or a gateway's) drops it next.
	for deadline := time.Now().Add(time.Minute); ; {
		var left bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rtgw.decoding)`).Scan(&left); err != nil {
			return fmt.Errorf("read capture mode: %w", err)
		}
		if !left {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("switch capture to triggers: done, but the slot was not dropped within a minute; see the gateways' logs")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
