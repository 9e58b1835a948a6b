package notify_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

// BenchmarkDelete10k measures what one DELETE of 10,000 rows costs the
// writer (statement plus COMMIT) when the table is not tracked, tracked with
// one event per row, and tracked with a batch event per 1,000 rows. Run:
//
//	go test ./notify -run '^$' -bench Delete10k -benchtime 10x
func BenchmarkDelete10k(b *testing.B) {
	for _, c := range []struct {
		name  string
		track *config.Track
	}{
		{"untracked", nil},
		{"per-row", &config.Track{Table: "facts", Prefix: "fact"}},
		{"batch", &config.Track{Table: "facts", Prefix: "fact", BatchEvent: "facts_batch_deleted", BatchKey: "fact_ids"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, pgtest.NewDatabase(b))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, `
CREATE TABLE facts (id serial, amount bigint NOT NULL, fact_date date NOT NULL, description text,
                    record_type varchar(10) NOT NULL DEFAULT 'fact', PRIMARY KEY (id, fact_date))
    PARTITION BY RANGE (fact_date);
CREATE TABLE facts_2026_01 PARTITION OF facts FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')`); err != nil {
				b.Fatal(err)
			}
			var tracks []config.Track
			if c.track != nil {
				tracks = append(tracks, *c.track)
			}
			if err := notify.Install(ctx, conn, tracks); err != nil {
				b.Fatal(err)
			}
			var events int64
			for b.Loop() {
				b.StopTimer()
				if _, err := conn.Exec(ctx, `TRUNCATE facts; INSERT INTO facts (amount, fact_date, description)
SELECT i, '2026-01-15', 'groceries' FROM generate_series(1, 10000) i`); err != nil {
					b.Fatal(err)
				}
				before := count(b, conn)
				b.StartTimer()
				if _, err := conn.Exec(ctx, `DELETE FROM facts`); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				events += count(b, conn) - before
				b.StartTimer()
			}
			b.ReportMetric(float64(events)/float64(b.N), "events/op")
		})
	}
}

func count(b *testing.B, conn *pgx.Conn) int64 {
	var n int64
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM rtgw.event`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}
