package notify

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	rtsql "github.com/budget-rt/gateway/sql"
)

// Track names a table to track and the prefix of its event names.
type Track struct {
	Table   string
	Prefix  string
	Columns []string // nil: every column
}

// Install installs or upgrades the SQL and (re)configures tracking of the
// given tables. Running it again changes nothing that is already right.
func Install(ctx context.Context, conn *pgx.Conn, tracks []Track) error {
	// The file holds several statements and its own BEGIN/COMMIT; the simple
	// protocol (no arguments) runs it as psql would.
	if _, err := conn.Exec(ctx, rtsql.Install); err != nil {
		return fmt.Errorf("install sql: %w", err)
	}
	for _, t := range tracks {
		var cols any
		if t.Columns != nil {
			cols = t.Columns
		}
		if _, err := conn.Exec(ctx, `SELECT rtgw.track($1::regclass, $2, $3::text[])`, t.Table, t.Prefix, cols); err != nil {
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
}) ([]Track, error) {
	rows, err := q.Query(ctx, `SELECT tbl::text, prefix, columns FROM rtgw.tracked ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("read tracked tables: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Track, error) {
		var t Track
		err := r.Scan(&t.Table, &t.Prefix, &t.Columns)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("read tracked tables: %w", err)
	}
	return out, nil
}
