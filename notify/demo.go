package notify

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/config"
	rtsql "github.com/budget-rt/gateway/sql"
)

// DemoTrack is what `gateway demo` and the load tool track: the example
// tables facts and articles.
const DemoTrack = "facts:budget_fact,articles:article"

// InstallDemo creates the example tables (if absent) in the database at
// dbURL, installs the SQL and tracks them as DemoTrack says.
func InstallDemo(ctx context.Context, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, rtsql.DemoTables); err != nil {
		return fmt.Errorf("create the demo tables: %w", err)
	}
	tracks, err := config.ParseTrack(DemoTrack)
	if err != nil {
		return err
	}
	if err := Install(ctx, conn, tracks); err != nil {
		return fmt.Errorf("track the demo tables: %w", err)
	}
	return nil
}
