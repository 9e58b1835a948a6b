package notify_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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

// BenchmarkReplayLog measures a resume served from the event log: one
// Replay of 10,000 events committed in 1,000 transactions of 10 rows, read
// in pages of transactions (PageTx, 256 by default) from one snapshot. Run:
//
//	go test ./notify -run '^$' -bench ReplayLog -benchtime 20x
func BenchmarkReplayLog(b *testing.B) {
	ctx := context.Background()
	const txs, rows = 1000, 10
	store := benchLog(b, func(conn *pgx.Conn) {
		for range txs {
			if _, err := conn.Exec(ctx, `INSERT INTO facts (amount, fact_date, description)
SELECT i, '2026-01-15', 'groceries' FROM generate_series(1, $1) i`, rows); err != nil {
				b.Fatal(err)
			}
		}
	})
	_, head, _, err := store.Latest(ctx, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	events := 0
	for b.Loop() {
		err := store.Replay(ctx, notify.Position{}, head, func(evs []notify.Event) error {
			events += len(evs)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	if events != b.N*txs*rows {
		b.Fatalf("replayed %d events in %d replays, want %d each", events, b.N, txs*rows)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}

// BenchmarkLatestWindow measures what a starting gateway reads before it is
// ready: Latest of the newest 10,000 events (GATEWAY_REPLAY_EVENTS' default)
// from a log of 20,000 single-row transactions (the shape of a busy app's
// writes, one rtgw.tx row per event), and from one of 20 transactions of
// 10,000 rows (a batch import: the window is the newest transaction). Run:
//
//	go test ./notify -run '^$' -bench LatestWindow -benchtime 20x
func BenchmarkLatestWindow(b *testing.B) {
	for _, shape := range []struct {
		name     string
		txs, per int
	}{{"1-row-tx", 20_000, 1}, {"10k-row-tx", 20, 10_000}} {
		b.Run(shape.name, func(b *testing.B) { benchLatest(b, shape.txs, shape.per) })
	}
}

func benchLatest(b *testing.B, txs, per int) {
	const window = 10_000
	ctx := context.Background()
	store := benchLog(b, func(conn *pgx.Conn) {
		// Transactions committed by a procedure: no round trip each.
		for _, sql := range []string{`CREATE PROCEDURE fill(txs int, per int) LANGUAGE plpgsql AS $$
BEGIN
  FOR t IN 1..txs LOOP
    INSERT INTO facts (amount, fact_date, description)
    SELECT i, '2026-01-15', 'groceries for the week, row ' || i FROM generate_series(1, per) i;
    COMMIT;
  END LOOP;
END $$`, fmt.Sprintf(`CALL fill(%d, %d)`, txs, per), `VACUUM ANALYZE rtgw.tx, rtgw.event`} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportAllocs()
	for b.Loop() {
		evs, _, complete, err := store.Latest(ctx, window)
		if err != nil {
			b.Fatal(err)
		}
		if len(evs) != window || complete {
			b.Fatalf("Latest gave %d events (complete %v), want %d of more", len(evs), complete, window)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*window), "ns/event")
}

// benchLog is a Store over a throwaway database with the demo's facts
// table tracked, after fill has written the log through conn.
func benchLog(b *testing.B, fill func(conn *pgx.Conn)) *notify.Store {
	b.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(b)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE facts (id serial PRIMARY KEY, amount bigint NOT NULL, fact_date date NOT NULL,
description text, record_type varchar(10) NOT NULL DEFAULT 'fact')`); err != nil {
		b.Fatal(err)
	}
	if err := notify.Install(ctx, conn, []config.Track{{Table: "facts", Prefix: "budget_fact"}}); err != nil {
		b.Fatal(err)
	}
	fill(conn)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return &notify.Store{Pool: pool, Logger: slog.New(slog.DiscardHandler)}
}
