package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// insertRows inserts rows first..last (the writer's indexes) in one
// statement, hence one commit. The description carries the marker the
// clients look for; the demo tracks every column of facts, so it is in
// the event's data.
const insertRows = `INSERT INTO facts (article_id, amount, description)
SELECT 1, g, $1 || g FROM generate_series($2::bigint, $3::bigint) AS g`

// writer commits rows into facts at a steady rate, k rows per commit,
// over a few connections, and remembers when each commit returned.
type writer struct {
	pool    *pgxpool.Pool
	logger  *slog.Logger
	marker  string  // description prefix, "rtl<run>."
	rate    float64 // rows per second
	batch   int     // rows per commit
	conns   int     // connections committing in parallel
	clock   clock
	commits atomic.Int64
	failed  atomic.Int64

	mu       sync.Mutex
	commitAt []int32 // by row index: when its commit returned, 0 if unknown
	started  time.Time
	ended    time.Time
}

// run commits for d, or until ctx ends. Commits are scheduled at fixed
// times from the start, so a slow commit is made up by the next ones
// rather than lowering the rate; a writer that cannot keep up shows it in
// the achieved rate. The last commits are not cut at d: a commit cut
// while in flight may or may not have happened, and its time would be
// unknown.
func (w *writer) run(ctx context.Context, d time.Duration) {
	interval := time.Duration(float64(time.Second) * float64(w.batch) / w.rate)
	var next atomic.Int64 // next commit number
	w.started = time.Now()
	var wg sync.WaitGroup
	for range w.conns {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				due := w.started.Add(time.Duration(i) * interval)
				if !due.Before(w.started.Add(d)) {
					return
				}
				if wait := time.Until(due); wait > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(wait):
					}
				}
				w.commit(ctx, i*int64(w.batch), (i+1)*int64(w.batch)-1)
			}
		})
	}
	wg.Wait()
	w.ended = time.Now()
}

func (w *writer) commit(ctx context.Context, first, last int64) {
	_, err := w.pool.Exec(ctx, insertRows, w.marker, first, last)
	t := w.clock.now()
	if err != nil {
		// A commit cut by the end of the run may or may not have happened:
		// the count of committed rows is read back from the table.
		if ctx.Err() == nil {
			w.failed.Add(1)
			w.logger.Warn("commit rows", "first", first, "err", err)
		}
		return
	}
	w.commits.Add(1)
	w.mu.Lock()
	if need := int(last) + 1; need > len(w.commitAt) {
		grown := make([]int32, max(need, 2*len(w.commitAt)))
		copy(grown, w.commitAt)
		w.commitAt = grown
	}
	for r := first; r <= last; r++ {
		w.commitAt[r] = t
	}
	w.mu.Unlock()
}

// committed reads back which of the run's rows are in the table: the
// truth about commits whose answer was lost. It returns a set by index.
func (w *writer) committed(ctx context.Context) ([]bool, error) {
	rows, err := w.pool.Query(ctx, `SELECT substr(description, $2)::bigint FROM facts WHERE description LIKE $1`,
		w.marker+"%", len(w.marker)+1)
	if err != nil {
		return nil, fmt.Errorf("read back the rows: %w", err)
	}
	var set []bool
	for rows.Next() {
		var i int64
		if err := rows.Scan(&i); err != nil {
			return nil, fmt.Errorf("read back the rows: %w", err)
		}
		for int64(len(set)) <= i {
			set = append(set, false)
		}
		set[i] = true
	}
	return set, rows.Err()
}

// checkTable fails early, with a hint, when facts is not the demo's.
func checkTable(ctx context.Context, pool *pgxpool.Pool) error {
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns
		WHERE table_name = 'facts' AND column_name IN ('article_id', 'amount', 'description')`).Scan(&n)
	if err != nil {
		return fmt.Errorf("look at table facts: %w", err)
	}
	if n != 3 {
		return errors.New("no table facts with article_id, amount and description: " +
			"point -db at the database of `gateway demo`, or pass -setup to create the demo's tables")
	}
	return nil
}

// newMarker is the description prefix of this run's rows; a run id keeps
// the rows of earlier runs (and other writers) out of the count.
func newMarker(run string) string { return "rtl" + strings.ToLower(run) + "." }
