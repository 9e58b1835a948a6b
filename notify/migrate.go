package notify

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/config"
	rtsql "github.com/budget-rt/gateway/sql"
)

// Install installs or upgrades the SQL and (re)configures tracking of the
// given tables. Running it again changes nothing that is already right.
func Install(ctx context.Context, conn *pgx.Conn, tracks []config.Track) error {
	// The file holds several statements and its own BEGIN/COMMIT; the simple
	// protocol (no arguments) runs it as psql would.
	if _, err := conn.Exec(ctx, rtsql.Install); err != nil {
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
		return fmt.Errorf("uninstall sql: %w", err)
	}
	return nil
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
