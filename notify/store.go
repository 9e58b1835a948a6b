package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Errors of Replay: the position cannot be resumed from.
var (
	// ErrExpired: the position was issued but its events have been pruned.
	ErrExpired = errors.New("position is older than the event log keeps")
	// ErrUnknown: no event has this position; it was never issued here.
	ErrUnknown = errors.New("position was not issued by this event log")
)

// Store reads the event log (rtgw.tx joined with rtgw.event).
type Store struct {
	Pool *pgxpool.Pool
	// MaxRowBytes is the largest row sent in full; larger rows are cut to their
	// primary key and marked Truncated. Zero means no limit.
	MaxRowBytes int
	// PageTx is how many transactions one query reads; zero means 256.
	PageTx int
	// KeepColumns names, per table, columns a truncated row keeps besides
	// its primary key (those visibility rules route by).
	KeepColumns map[string][]string
	// Logger reports rows the store skips; it defaults to slog.Default().
	Logger *slog.Logger

	bad   tally        // rows skipped by After and Latest, by kind
	pages atomic.Int64 // queries of readTxQuery made, for tests
}

// BadRows returns how many rows of each kind (BadRow*) After and Latest have
// skipped because the gateway cannot use them. Each row is counted once per
// process: the follower reads on from where Latest stopped, and replays skip
// the same rows again without counting them.
func (s *Store) BadRows() map[string]uint64 { return s.bad.snapshot() }

// readTxQuery reads whole transactions in commit order. Paging by transaction
// lets it walk the unique index on seq and then the (xid, id) primary key.
// Every row also says how many transactions the page held: fewer than the
// limit, and there was nothing after them, so the reader need not ask again
// to find the log's end (a query per doorbell saved when commits come one
// at a time), and a transaction without events (its events deleted by
// hand) is a row of NULLs that moves the page past it. NOT MATERIALIZED:
// read twice, the page is still walked in seq order, so the final sort only
// orders each transaction's rows (as one materialized list it would sort
// the whole page: millions of rows for a page of large transactions).
const readTxQuery = `
WITH t AS NOT MATERIALIZED (
    SELECT xid, seq, committed_at FROM rtgw.tx
    WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3
)
SELECT t.seq, e.id, e.tbl, e.op, e.type, e.data::text, t.committed_at, (SELECT count(*) FROM t)
FROM t LEFT JOIN rtgw.event e ON e.xid = t.xid
ORDER BY t.seq, e.id`

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// After returns the events after pos, in commit order, reading at most one
// page of transactions, the position to read after next time, and whether
// there may be more after that position. The reader is caught up when there
// is no more, or when the position is pos: a page may hold no event and
// still move on, when every row in it was bad (skipped).
func (s *Store) After(ctx context.Context, pos Position) ([]Event, Position, bool, error) {
	return s.page(ctx, s.Pool, pos, Position{Seq: math.MaxInt64, ID: math.MaxInt64}, true)
}

// page reads the events in (after, upTo], at most one page of transactions,
// and returns the position the next page starts after (after itself when
// there was nothing to read) and whether the page was full (there may be
// more). report says whether bad rows are counted.
func (s *Store) page(ctx context.Context, q querier, after, upTo Position, report bool) ([]Event, Position, bool, error) {
	limit := s.PageTx
	if limit <= 0 {
		limit = 256
	}
	from := after.Seq
	if after.ID == math.MaxInt64 {
		from++ // after a whole transaction: no need to read it again
	}
	s.pages.Add(1)
	rows, err := q.Query(ctx, readTxQuery, from, upTo.Seq, limit)
	if err != nil {
		return nil, after, false, fmt.Errorf("read event log: %w", err)
	}
	sc, err := s.scan(ctx, q, rows, report, true)
	if err != nil {
		return nil, after, false, err
	}
	if sc.rows == 0 {
		return nil, after, false, nil
	}
	// Transactions are read whole, so the next page starts after the last
	// one, whether its rows were good or not.
	next := Position{Seq: sc.last.Seq, ID: math.MaxInt64}
	out := sc.evs[:0]
	for _, e := range sc.evs {
		if e.Pos.Compare(after) > 0 && e.Pos.Compare(upTo) <= 0 {
			out = append(out, e)
		}
	}
	return out, next, sc.pageTx >= int64(limit), nil
}

// scanned is what one query of event rows found.
type scanned struct {
	evs         []Event  // the rows that decoded, in the query's order
	first, last Position // of the first and last rows, bad ones included
	rows        int      // rows read, bad ones included
	pageTx      int64    // transactions the page held (readTxQuery's last column)
}

// scan decodes event rows (as readTxQuery selects them), skipping the ones
// the gateway cannot use (counted and logged when report is set), and
// applies the row size limit. Every column is read as nullable, so a row
// broken by hand is skipped instead of failing every read after it.
// counted says the rows end with readTxQuery's count of transactions.
func (s *Store) scan(ctx context.Context, q querier, rows pgx.Rows, report, counted bool) (scanned, error) {
	defer rows.Close()
	var (
		sc           scanned
		buf          bytes.Buffer
		tbl, op, typ pgtype.Text
		data         []byte
		committed    pgtype.Timestamptz
		seq          int64
		idv          pgtype.Int8
	)
	dest := []any{&seq, &idv, &tbl, &op, &typ, &data, &committed}
	if counted {
		dest = append(dest, &sc.pageTx)
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return scanned{}, fmt.Errorf("scan event: %w", err)
		}
		if !idv.Valid {
			// A transaction without events (readTxQuery's outer join):
			// nothing to publish, but the page moves past it.
			if sc.rows == 0 {
				sc.first = Position{Seq: seq, ID: math.MaxInt64}
			}
			sc.last = Position{Seq: seq, ID: math.MaxInt64}
			sc.rows++
			continue
		}
		id := idv.Int64
		r := row{Seq: seq, ID: id, Table: tbl.String, Op: op.String, Type: typ.String, Data: data}
		if committed.Valid && committed.InfinityModifier == pgtype.Finite {
			r.Time = committed.Time
		}
		if sc.rows == 0 {
			sc.first = Position{Seq: seq, ID: id}
		}
		sc.last = Position{Seq: seq, ID: id}
		sc.rows++
		e, err := decodeRow(r, &buf)
		if err != nil {
			if re, ok := err.(*RowError); ok && report {
				s.bad.add(s.Logger, "skipping an event log row the gateway cannot use", re.Kind,
					"seq", re.Pos.Seq, "id", re.Pos.ID, "table", re.Table, "detail", re.Detail)
			}
			continue
		}
		sc.evs = append(sc.evs, e)
	}
	if err := rows.Err(); err != nil {
		return scanned{}, fmt.Errorf("read event log: %w", err)
	}
	if err := s.truncate(ctx, q, sc.evs); err != nil {
		return scanned{}, err
	}
	return sc, nil
}

// Latest returns up to n of the newest events, oldest first, the position
// of the newest row in the log (zero when the log is empty), and whether
// the events are the whole log. Bad rows are skipped, so there may be fewer
// than n events although the log holds more.
func (s *Store) Latest(ctx context.Context, n int) ([]Event, Position, bool, error) {
	// Each transaction's events are fetched by their own index scan (LATERAL)
	// rather than joined: for a window of many small transactions the planner
	// otherwise hashes the whole event table and sorts the join on disk, which
	// took 36% longer (BenchmarkLatestWindow) while a starting gateway answers
	// 503. The outer order comes from the seq index, so the final sort only
	// orders events within a transaction.
	rows, err := s.Pool.Query(ctx, `
SELECT t.seq, e.id, e.tbl, e.op, e.type, e.data::text, t.committed_at
FROM (SELECT xid, seq, committed_at FROM rtgw.tx WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT $1) t
CROSS JOIN LATERAL (SELECT id, tbl, op, type, data FROM rtgw.event e WHERE e.xid = t.xid ORDER BY e.id DESC LIMIT $1) e
ORDER BY t.seq DESC, e.id DESC LIMIT $1`, n)
	if err != nil {
		return nil, Position{}, false, fmt.Errorf("read log head: %w", err)
	}
	sc, err := s.scan(ctx, s.Pool, rows, true, false)
	if err != nil {
		return nil, Position{}, false, err
	}
	slices.Reverse(sc.evs)
	// Newest first: the first row read is the head, good or bad, so the
	// follower reads on after it and does not meet a bad row twice.
	return sc.evs, sc.first, sc.rows < n, nil
}

// Replay calls fn with every event in (after, upTo], in order and in pages,
// all read from one snapshot so pruning cannot open a gap half-way. It fails
// with ErrExpired or ErrUnknown when after is not the position of an event
// still in the log. With upTo <= after it only checks that after exists.
func (s *Store) Replay(ctx context.Context, after, upTo Position, fn func([]Event) error) error {
	tx, err := s.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin replay: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	// The zero position is "before the first event": a client that connected
	// while the log was empty. It is never a client's own id (ParsePosition
	// refuses it), so there is nothing to check.
	if !after.IsZero() {
		if err := checkPosition(ctx, tx, after); err != nil {
			return err
		}
	}
	for after.Compare(upTo) < 0 {
		// Bad rows are skipped without counting them again: the follower or
		// Latest did when they first read them.
		evs, next, more, err := s.page(ctx, tx, after, upTo, false)
		if err != nil {
			return err
		}
		if next == after {
			break // nothing more; a page of bad rows only still moves on
		}
		if len(evs) > 0 {
			if err := fn(evs); err != nil {
				return err
			}
		}
		if !more {
			break // the page was not full: nothing after it up to upTo
		}
		after = next
	}
	return nil
}

// issued returns the last commit sequence rtgw.tx_seq has drawn (zero
// before the first).
func (s *Store) issued(ctx context.Context) (int64, error) {
	var n int64
	err := s.Pool.QueryRow(ctx, `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM rtgw.tx_seq`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("read commit sequence: %w", err)
	}
	return n, nil
}

// checkPosition tells whether p is an event still in the log, and if not,
// whether it was pruned (its commit sequence was issued, and is older than
// the oldest kept) or never issued at all.
func checkPosition(ctx context.Context, q querier, p Position) error {
	var (
		exists bool
		oldest *int64
		issued int64
	)
	err := q.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid WHERE t.seq = $1 AND e.id = $2),
       (SELECT min(seq) FROM rtgw.tx),
       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM rtgw.tx_seq)`, p.Seq, p.ID).Scan(&exists, &oldest, &issued)
	switch {
	case err != nil:
		return fmt.Errorf("look up position: %w", err)
	case exists:
		return nil
	case p.Seq <= issued && (oldest == nil || p.Seq < *oldest):
		return ErrExpired
	}
	return ErrUnknown
}

// truncate cuts rows over MaxRowBytes down to their primary key, so a client
// learns the row changed and refetches it instead of receiving megabytes.
func (s *Store) truncate(ctx context.Context, q querier, evs []Event) error {
	if s.MaxRowBytes <= 0 {
		return nil
	}
	for i := range evs {
		e := &evs[i]
		if len(e.Data) <= s.MaxRowBytes {
			continue
		}
		var pk []string
		err := q.QueryRow(ctx, `SELECT pk FROM rtgw.tracked WHERE tbl = to_regclass($1)`, e.Table).Scan(&pk)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read key of %s: %w", e.Table, err)
		}
		for _, k := range s.KeepColumns[e.Table] {
			if !slices.Contains(pk, k) {
				pk = append(pk, k)
			}
		}
		var row map[string]json.RawMessage
		if err := json.Unmarshal(e.Data, &row); err != nil {
			return fmt.Errorf("decode event %s: %w", e.Pos, err)
		}
		var buf bytes.Buffer
		buf.WriteByte('{')
		for j, k := range pk {
			if j > 0 {
				buf.WriteByte(',')
			}
			name, _ := json.Marshal(k)
			buf.Write(name)
			buf.WriteByte(':')
			if v, ok := row[k]; ok {
				buf.Write(v)
			} else {
				buf.WriteString("null")
			}
		}
		buf.WriteByte('}')
		e.Data = buf.Bytes()
		e.Truncated = true
	}
	return nil
}

// Oldest returns the commit sequence of the oldest transaction still in the
// log, or zero when it is empty.
func (s *Store) Oldest(ctx context.Context) (int64, error) {
	var seq *int64
	if err := s.Pool.QueryRow(ctx, `SELECT min(seq) FROM rtgw.tx`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read log tail: %w", err)
	}
	if seq == nil {
		return 0, nil
	}
	return *seq, nil
}
