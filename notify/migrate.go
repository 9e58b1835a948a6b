package notify

import (
	"context"
	"fmt"

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
