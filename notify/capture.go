package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/semaphore"
)

// Capture moves changes from the capture slot into the event log when the
// database captures by logical decoding (rtgw.decoding, set up by `gateway
// migrate` with GATEWAY_CAPTURE=decoding). Writers then pay for no trigger:
// the WAL they write anyway is decoded by PostgreSQL's pgoutput, and this
// service writes the events, with their seqs in commit order, in batches
// (rtgw.ingest). The followers of every replica read the log as always.
//
// Every replica runs one; the slot admits one reader at a time, so the
// others stand by and one of them takes over within Idle when the reader
// stops. Nothing is lost or repeated across a stop at any point: the slot
// is told a position only after the transactions before it are committed
// to the log, and a transaction it sends again (a crash between the two) is
// recognised by rtgw.decoding.lsn and skipped.
type Capture struct {
	// Pool writes the log and reads the configuration. Required.
	Pool *pgxpool.Pool
	// Connect opens a replication connection (replication=database) to the
	// same database. Required.
	Connect func(ctx context.Context) (*pgconn.PgConn, error)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Idle is how often a replica that does not hold the slot looks again
	// (decoding not configured, slot held by another replica, an error);
	// zero means 2 s.
	Idle time.Duration
	// StatusInterval is how often the reader tells the server how far the
	// log has the slot's changes (what lets it recycle WAL); zero means 1 s.
	StatusInterval time.Duration
	// Linger is the least time between two rtgw.ingest calls while
	// transactions keep coming: each call costs a commit (a WAL flush) and
	// a function's set-up, so under load it pays to take a few transactions
	// at once; an isolated transaction is written at once. Zero means 2 ms;
	// negative, no wait.
	Linger time.Duration
	// MaxBatch bounds the rows written by one rtgw.ingest call; zero means
	// 5,000. A transaction with more is written in parts of this size (only
	// its last part makes it visible), so its size bounds neither this
	// process's memory nor a call's.
	MaxBatch int

	streaming    atomic.Bool
	transactions atomic.Uint64 // transactions decoded and committed to the log
	confirmed    atomic.Uint64 // LSN: everything before is in the log
	batches      atomic.Uint64
	parts        atomic.Uint64

	logMu   sync.Mutex
	lastErr string // last error logged, to log a repeat once
}

// ReplicationConfig is the configuration of the capture's replication
// connection to the database at url.
func ReplicationConfig(url string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "rtgw-capture"
	// pgoutput sends values as text in the walsender's formats; these read
	// back exactly (rtgw.ingest parses them in its own session).
	cfg.RuntimeParams["DateStyle"] = "ISO, YMD"
	cfg.RuntimeParams["IntervalStyle"] = "postgres"
	cfg.RuntimeParams["extra_float_digits"] = "3"
	return cfg, nil
}

// CaptureStats is what the capture has done since it started, for metrics.
type CaptureStats struct {
	Streaming    bool   // this replica holds the slot
	Transactions uint64 // decoded transactions written to the log
	Batches      uint64 // rtgw.ingest calls
	Parts        uint64 // parts of large transactions written
	Confirmed    uint64 // LSN confirmed to the slot
}

// Stats returns the capture's counters.
func (c *Capture) Stats() CaptureStats {
	return CaptureStats{Streaming: c.streaming.Load(), Transactions: c.transactions.Load(),
		Batches: c.batches.Load(), Parts: c.parts.Load(), Confirmed: c.confirmed.Load()}
}

// errSlotUnavailable: another replica reads the slot, or it is gone.
var errSlotUnavailable = errors.New("capture slot is read by another replica or gone")

// errRetired: the database went back to triggers and the slot is drained.
var errRetired = errors.New("capture by decoding retired")

// Run reads the slot whenever the database captures by decoding and this
// replica can hold the slot, until ctx ends.
func (c *Capture) Run(ctx context.Context) error {
	log := c.logger()
	idle := c.Idle
	if idle <= 0 {
		idle = 2 * time.Second
	}
	for {
		slot, err := c.slot(ctx)
		if err == nil && slot != "" {
			err = c.stream(ctx, slot)
			if errors.Is(err, errRetired) {
				err = c.retire(ctx, slot)
				if err == nil {
					log.Info("capture by decoding retired: the slot is drained and dropped, triggers capture")
				}
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, errSlotUnavailable) {
			c.logOnce(log, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(idle):
		}
	}
}

func (c *Capture) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// logOnce logs err as a warning unless it repeats the last one.
func (c *Capture) logOnce(log *slog.Logger, err error) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if err.Error() == c.lastErr {
		return
	}
	c.lastErr = err.Error()
	log.Warn("capture by decoding: retrying", "err", err)
}

// slot returns the capture slot, or "" when the database captures by
// triggers (or predates decoding).
func (c *Capture) slot(ctx context.Context) (string, error) {
	var slot string
	err := c.Pool.QueryRow(ctx, `
SELECT coalesce((SELECT slot FROM rtgw.decoding), '') WHERE to_regclass('rtgw.decoding') IS NOT NULL`).Scan(&slot)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read capture mode: %w", err)
	}
	return slot, nil
}

// retire drops the drained slot, then the decoding row and the publication.
func (c *Capture) retire(ctx context.Context, slot string) error {
	if err := DropSlot(ctx, c.Pool, slot); err != nil {
		return err
	}
	if _, err := c.Pool.Exec(ctx, `DELETE FROM rtgw.decoding WHERE slot = $1 AND NOT active`, slot); err != nil {
		return fmt.Errorf("remove capture row: %w", err)
	}
	if _, err := c.Pool.Exec(ctx, `DROP PUBLICATION IF EXISTS rtgw`); err != nil {
		return fmt.Errorf("drop capture publication: %w", err)
	}
	return nil
}

// DropSlot drops the replication slot if it exists. Its reader's walsender
// leaves it a moment after the reader's connection closes: a slot in use is
// tried again for up to 5 s.
func DropSlot(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, slot string) error {
	for range 50 {
		_, err := db.Exec(ctx, `SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1`, slot)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object in use
			if err != nil {
				return fmt.Errorf("drop slot %s: %w", slot, err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("drop slot %s: still in use after 5 s", slot)
}

// item is what the reader hands the writer, in stream order: a committed
// transaction (or a part of a large one), or a position with nothing before
// it left to write.
type item struct {
	tx     *decodedTx
	weight int64         // of the in-flight budget it holds (with tx)
	upto   pglogrepl.LSN // with tx nil: every transaction before is handed over
	tick   bool          // with tx nil: look whether the capture is retiring
}

// stream reads the slot until an error, ctx's end or retirement.
func (c *Capture) stream(ctx context.Context, slot string) error {
	conn, err := c.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connect for replication: %w", err)
	}
	defer conn.Close(context.Background())

	keys, err := c.keys(ctx)
	if err != nil {
		return err
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'rtgw'", "messages 'true'"},
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "55006" || pgErr.Code == "42704") {
		// Held by another replica, or just dropped by the one that
		// retired it: look again later, quietly.
		return errSlotUnavailable
	}
	if err != nil {
		return fmt.Errorf("start replication from slot %s: %w", slot, err)
	}
	c.streaming.Store(true)
	defer c.streaming.Store(false)
	c.logger().Info("capture by decoding: reading the slot", "slot", slot)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	items := make(chan item, 256)
	budget := semaphore.NewWeighted(maxInFlight)
	done := make(chan error, 1)
	go func() {
		err := c.write(ctx, slot, items, budget)
		cancel(err)
		done <- err
	}()
	rerr := c.read(ctx, conn, keys, items, budget)
	cancel(rerr)
	werr := <-done
	// Tell the server how far the log is, so a successor starts there.
	_ = pglogrepl.SendStandbyStatusUpdate(context.Background(), conn,
		pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(c.confirmed.Load())})
	if werr != nil && !errors.Is(werr, context.Canceled) {
		return werr
	}
	if errors.Is(rerr, context.Canceled) {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
	}
	return rerr
}

// keys reads, for each tracked partitioned table, the primary key columns
// that a move between partitions keeps (those outside the partition key),
// by table oid: a delete and an insert with equal values there, one after
// the other, are such a move. Other tables cannot move a row; for them a
// delete and an insert of one key are two statements, as triggers see them.
func (c *Capture) keys(ctx context.Context) (map[uint32][]string, error) {
	// Every tracked table is in the map (with no key when it is not
	// partitioned), so that its relation does not make read look again.
	rows, err := c.Pool.Query(ctx, `
SELECT c.tbl::oid, CASE WHEN p.partrelid IS NULL THEN '{}'::text[] ELSE
       ARRAY(SELECT k FROM unnest(c.pk) k
             WHERE k NOT IN (SELECT a.attname FROM pg_attribute a
                             WHERE a.attrelid = p.partrelid AND a.attnum = ANY (p.partattrs))) END
FROM rtgw.tracked c LEFT JOIN pg_partitioned_table p ON p.partrelid = c.tbl`)
	if err != nil {
		return nil, fmt.Errorf("read tracked keys: %w", err)
	}
	out := map[uint32][]string{}
	var oid uint32
	var pk []string
	if _, err := pgx.ForEachRow(rows, []any{&oid, &pk}, func() error {
		out[oid] = pk
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read tracked keys: %w", err)
	}
	return out, nil
}

// read receives the stream, assembles transactions and hands them to the
// writer; it also answers the server with the writer's position.
func (c *Capture) read(ctx context.Context, conn *pgconn.PgConn, keys map[uint32][]string, items chan<- item, budget *semaphore.Weighted) error {
	interval := c.StatusInterval
	if interval <= 0 {
		interval = time.Second
	}
	maxRows := c.maxBatch()
	rels := map[uint32]*relation{}
	var cur *decodedTx
	var handed pglogrepl.LSN // the last keepalive position handed over
	hand := func(it item) error {
		if it.tx != nil {
			// Decoded rows wait in memory for the writer up to a bound.
			it.weight = min(int64(it.tx.bytes)+1, maxInFlight)
			if err := budget.Acquire(ctx, it.weight); err != nil {
				return err
			}
		}
		select {
		case items <- it:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Reads wait on the socket's deadline, not on a context: a context per
	// message cost a timer and a goroutine each (a third of this process's
	// CPU per transaction, measured). The deadline wakes the loop to confirm
	// the position, and ctx's end sets it to now.
	netConn := conn.Conn()
	stop := context.AfterFunc(ctx, func() { _ = netConn.SetReadDeadline(time.Now()) })
	defer stop()
	defer netConn.SetReadDeadline(time.Time{})
	next := time.Now().Add(interval)
	deadline := time.Time{}
	for {
		if !time.Now().Before(next) {
			err := pglogrepl.SendStandbyStatusUpdate(ctx, conn,
				pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(c.confirmed.Load())})
			if err != nil {
				return fmt.Errorf("confirm to slot: %w", err)
			}
			if cur == nil {
				if err := hand(item{tick: true}); err != nil {
					return err
				}
			}
			next = time.Now().Add(interval)
		}
		if !deadline.Equal(next) {
			if err := ctx.Err(); err != nil {
				return err
			}
			deadline = next
			if err := netConn.SetReadDeadline(next); err != nil {
				return fmt.Errorf("receive from slot: %w", err)
			}
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from slot: %w", err)
		}
		var data []byte
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("slot stream: %w", pgconn.ErrorResponseToPgError(m))
		default:
			return fmt.Errorf("slot stream: unexpected %T", msg)
		}
		if len(data) == 0 {
			continue
		}
		switch data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			if cur == nil && ka.ServerWALEnd > handed {
				// Everything the server decoded before ServerWALEnd has been
				// handed over: once written, the slot may move there even
				// when it sent nothing (writes to untracked tables).
				if err := hand(item{upto: ka.ServerWALEnd}); err != nil {
					return err
				}
				handed = ka.ServerWALEnd
			}
			if ka.ReplyRequested {
				next = time.Now()
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return fmt.Errorf("parse wal data: %w", err)
			}
			lm, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return fmt.Errorf("parse pgoutput message: %w", err)
			}
			switch m := lm.(type) {
			case *pglogrepl.RelationMessage:
				rels[m.RelationID] = newRelation(m)
				if _, ok := keys[m.RelationID]; !ok {
					if keys, err = c.keys(ctx); err != nil {
						return err
					}
				}
			case *pglogrepl.BeginMessage:
				cur = &decodedTx{xid: m.Xid, final: m.FinalLSN, open: map[uint32]*ingestGroup{}}
			case *pglogrepl.InsertMessage:
				if err := cur.change(rels, keys, m.RelationID, 'I', m.Tuple, nil); err != nil {
					return err
				}
			case *pglogrepl.UpdateMessage:
				if err := cur.change(rels, keys, m.RelationID, 'U', m.NewTuple, m.OldTuple); err != nil {
					return err
				}
			case *pglogrepl.DeleteMessage:
				if err := cur.change(rels, keys, m.RelationID, 'D', nil, m.OldTuple); err != nil {
					return err
				}
			case *pglogrepl.LogicalDecodingMessage:
				if m.Prefix == "rtgw" && m.Transactional && cur != nil {
					cur.mark(m.Content, c.logger())
				}
			}
			if cur != nil && (cur.rows >= maxRows || cur.bytes >= maxPartBytes) {
				if err := hand(item{tx: cur.split()}); err != nil {
					return err
				}
			}
			switch m := lm.(type) {
			case *pglogrepl.CommitMessage:
				if cur == nil {
					return errors.New("slot stream: commit without begin")
				}
				cur.end = m.TransactionEndLSN
				cur.at = m.CommitTime
				if err := hand(item{tx: cur}); err != nil {
					return err
				}
				cur = nil
			}
		}
	}
}

// write commits the transactions handed over to the log, in batches, and
// advances the confirmed position.
func (c *Capture) write(ctx context.Context, slot string, items <-chan item, budget *semaphore.Weighted) error {
	maxRows := c.maxBatch()
	var batch []*decodedTx
	rows, bytes := 0, 0
	var held int64
	var upto pglogrepl.LSN // a keepalive's position, confirmed after the batch
	tick := false
	var last time.Time // when the last batch was written
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := c.ingest(ctx, slot, batch); err != nil {
			return err
		}
		last = time.Now()
		c.advance(batch[len(batch)-1].end)
		c.transactions.Add(uint64(len(batch)))
		batch, rows, bytes = batch[:0], 0, 0
		budget.Release(held)
		held = 0
		return nil
	}
	linger := c.Linger
	if linger == 0 {
		linger = 2 * time.Millisecond
	}
	for {
		var it item
		select {
		case it = <-items:
		case <-ctx.Done():
			return ctx.Err()
		}
		if wait := linger - time.Since(last); it.tx != nil && wait > 0 {
			// More are likely on their way: let them join this batch.
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		for {
			switch {
			case it.tx != nil && it.tx.part:
				// A part goes alone, after what came before it; it moves
				// no position (its transaction is not written yet).
				if err := flush(); err != nil {
					return err
				}
				if err := c.ingest(ctx, slot, []*decodedTx{it.tx}); err != nil {
					return err
				}
				c.parts.Add(1)
				budget.Release(it.weight)
			case it.tx != nil:
				batch = append(batch, it.tx)
				rows += it.tx.rows
				bytes += it.tx.bytes
				held += it.weight
			case it.tick:
				tick = true
			default:
				// Everything before it is in this batch or written: it
				// moves once the batch is (a flush here would cut the
				// batches as small as the keepalives are frequent).
				upto = max(upto, it.upto)
			}
			if rows >= maxRows || bytes >= maxPartBytes {
				break
			}
			var more bool
			select {
			case it, more = <-items:
			default:
			}
			if !more {
				break
			}
		}
		if err := flush(); err != nil {
			return err
		}
		c.advance(upto)
		if tick {
			tick = false
			if err := c.retiring(ctx); err != nil {
				return err
			}
		}
	}
}

// maxPartBytes bounds the rows' JSON in one rtgw.ingest call (a batch, or
// a part of a large transaction) besides MaxBatch: rows can be large.
const maxPartBytes = 8 << 20

// maxInFlight bounds the decoded rows held in memory between the reader
// and the writer.
const maxInFlight = 64 << 20

func (c *Capture) maxBatch() int {
	if c.MaxBatch > 0 {
		return c.MaxBatch
	}
	return 5000
}

// advance moves the confirmed position forward (never back).
func (c *Capture) advance(lsn pglogrepl.LSN) {
	for {
		old := c.confirmed.Load()
		if uint64(lsn) <= old || c.confirmed.CompareAndSwap(old, uint64(lsn)) {
			return
		}
	}
}

// retiring returns errRetired once the database has gone back to triggers
// and the slot is drained up to the switch.
func (c *Capture) retiring(ctx context.Context) error {
	var until *string
	err := c.Pool.QueryRow(ctx, `SELECT until::text FROM rtgw.decoding`).Scan(&until)
	if errors.Is(err, pgx.ErrNoRows) {
		return errRetired
	}
	if err != nil {
		return fmt.Errorf("read capture mode: %w", err)
	}
	if until == nil {
		return nil
	}
	lsn, err := pglogrepl.ParseLSN(*until)
	if err != nil {
		return fmt.Errorf("read capture mode: %w", err)
	}
	if uint64(lsn) <= c.confirmed.Load() {
		return errRetired
	}
	return nil
}

// ingest writes one batch with rtgw.ingest.
func (c *Capture) ingest(ctx context.Context, slot string, batch []*decodedTx) error {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, tx := range batch {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"x":`)
		buf.WriteString(strconv.FormatUint(uint64(tx.xid), 10))
		buf.WriteString(`,"f":"`)
		buf.WriteString(tx.final.String())
		buf.WriteByte('"')
		switch {
		case tx.part && tx.parts == 0:
			buf.WriteString(`,"first":true`)
		case !tx.part:
			buf.WriteString(`,"l":"`)
			buf.WriteString(tx.end.String())
			buf.WriteString(`","c":"`)
			buf.WriteString(tx.at.UTC().Format(time.RFC3339Nano))
			buf.WriteByte('"')
			if tx.parts > 0 {
				buf.WriteString(`,"k":true`)
			}
		}
		buf.WriteString(`,"g":[`)
		n := 0
		for _, g := range tx.groups {
			if len(g.rows) == 0 {
				continue
			}
			if n > 0 {
				buf.WriteByte(',')
			}
			n++
			fmt.Fprintf(&buf, `{"t":%d,"o":"%c"`, g.table, g.op)
			if g.marked {
				buf.WriteString(`,"m":true`)
			}
			if len(g.settings) > 0 {
				buf.WriteString(`,"s":`)
				buf.Write(g.settings)
			}
			buf.WriteString(`,"r":[`)
			for j, r := range g.rows {
				if j > 0 {
					buf.WriteByte(',')
				}
				buf.Write(r.json)
			}
			buf.WriteString("]}")
		}
		buf.WriteString("]}")
	}
	buf.WriteByte(']')
	if _, err := c.Pool.Exec(ctx, `SELECT rtgw.ingest($1, $2::jsonb)`, slot, buf.String()); err != nil {
		return fmt.Errorf("write decoded changes: %w", err)
	}
	c.batches.Add(1)
	return nil
}

// relation is a table as the stream describes it.
type relation struct {
	names  []string
	isJSON []bool // json and jsonb values are sent as JSON, not as strings
}

func newRelation(m *pglogrepl.RelationMessage) *relation {
	r := &relation{names: make([]string, len(m.Columns)), isJSON: make([]bool, len(m.Columns))}
	for i, col := range m.Columns {
		r.names[i] = col.Name
		r.isJSON[i] = col.DataType == 114 || col.DataType == 3802
	}
	return r
}

// decodedTx is one committed transaction's changes, grouped by statement
// as far as the stream tells.
type decodedTx struct {
	xid    uint32
	final  pglogrepl.LSN // of its commit record (Begin says it)
	part   bool          // a part of a large transaction, not the last
	parts  int           // parts handed before this one
	end    pglogrepl.LSN
	at     time.Time
	groups []*ingestGroup
	open   map[uint32]*ingestGroup // the statement a table's mark opened
	rows   int
	bytes  int          // of the rows' JSON
	last   *ingestGroup // where the previous row went
}

// ingestGroup is a run of rows of one table and kind: a statement when a
// mark opened it.
type ingestGroup struct {
	table    uint32
	op       byte
	marked   bool
	settings []byte
	rows     []decodedRow
}

type decodedRow struct {
	json []byte
	key  string // primary key values, to find a row moved between partitions
}

// split hands over the rows so far as a part of the transaction and keeps
// its statements open for the rows to come.
func (t *decodedTx) split() *decodedTx {
	part := &decodedTx{xid: t.xid, final: t.final, part: true, parts: t.parts, groups: t.groups, rows: t.rows, bytes: t.bytes}
	t.parts++
	t.rows, t.bytes = 0, 0
	t.last = nil
	t.groups = nil
	for _, g := range part.groups { // in their order
		if t.open[g.table] == g {
			cont := &ingestGroup{table: g.table, op: g.op, marked: g.marked, settings: g.settings}
			t.open[g.table] = cont
			t.groups = append(t.groups, cont)
		}
	}
	return part
}

// mark opens a statement of the table named in a message of rtgw.mark.
func (t *decodedTx) mark(content []byte, log *slog.Logger) {
	var m struct {
		T uint32          `json:"t"`
		O string          `json:"o"`
		S json.RawMessage `json:"s"`
	}
	if err := json.Unmarshal(content, &m); err != nil || len(m.O) != 1 {
		// Not ours (someone else's message under our prefix): its rows are
		// still captured, without settings.
		log.Warn("capture by decoding: ignoring a message that is not a statement mark", "content", string(content))
		return
	}
	g := &ingestGroup{table: m.T, op: m.O[0], marked: true}
	if len(m.S) > 0 && string(m.S) != "null" {
		g.settings = append([]byte(nil), m.S...)
	}
	t.groups = append(t.groups, g)
	t.open[m.T] = g
}

// change adds one row change.
func (t *decodedTx) change(rels map[uint32]*relation, keys map[uint32][]string, rel uint32, op byte, newTuple, oldTuple *pglogrepl.TupleData) error {
	if t == nil {
		return errors.New("slot stream: change outside a transaction")
	}
	r := rels[rel]
	if r == nil {
		return fmt.Errorf("slot stream: change of relation %d before its description", rel)
	}
	tuple := newTuple
	if op == 'D' {
		tuple = oldTuple
	}
	if tuple == nil {
		return fmt.Errorf("slot stream: %c of relation %d without its row (is its REPLICA IDENTITY FULL?)", op, rel)
	}
	row := decodedRow{json: rowJSON(r, tuple, oldTuple), key: rowKey(r, keys[rel], tuple)}
	// A row moved to another partition arrives as a delete and an insert of
	// the same key, one after the other; capture reports it as one update.
	if op == 'I' && t.last != nil && t.last.table == rel && t.last.op == 'D' && len(t.last.rows) > 0 &&
		t.last.rows[len(t.last.rows)-1].key == row.key && row.key != "" {
		t.last.rows = t.last.rows[:len(t.last.rows)-1]
		t.rows--
		op = 'U'
	}
	g := t.open[rel]
	if g == nil || g.op != op {
		g = nil
		if n := len(t.groups); n > 0 {
			if tail := t.groups[n-1]; tail.table == rel && tail.op == op && !tail.marked {
				g = tail
			}
		}
		if g == nil {
			g = &ingestGroup{table: rel, op: op}
			t.groups = append(t.groups, g)
		}
	}
	g.rows = append(g.rows, row)
	t.rows++
	t.bytes += len(row.json)
	t.last = g
	return nil
}

// rowJSON writes a row as {"column": "text", ...}; an unchanged TOASTed
// value is taken from the old row.
func rowJSON(r *relation, tuple, old *pglogrepl.TupleData) []byte {
	var b []byte
	b = append(b, '{')
	n := 0
	for i, col := range tuple.Columns {
		if i >= len(r.names) {
			break
		}
		if col.DataType == 'u' {
			if old == nil || i >= len(old.Columns) || old.Columns[i].DataType != 't' {
				continue // not sent: the row type fills in NULL
			}
			col = old.Columns[i]
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = AppendJSONString(b, r.names[i])
		b = append(b, ':')
		switch {
		case col.DataType == 'n':
			b = append(b, "null"...)
		case r.isJSON[i] && json.Valid(col.Data):
			b = append(b, col.Data...)
		default:
			b = AppendJSONString(b, string(col.Data))
		}
	}
	return append(b, '}')
}

// AppendJSONString appends s as a JSON string (as encoding/json writes it).
func AppendJSONString(b []byte, s string) []byte {
	if plainASCII(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// plainASCII reports whether s needs no escaping in JSON (names, numbers,
// most text).
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// rowKey joins the primary key's values ("" when unknown).
func rowKey(r *relation, pk []string, tuple *pglogrepl.TupleData) string {
	if len(pk) == 0 {
		return ""
	}
	var b []byte
	for _, k := range pk {
		found := false
		for i, name := range r.names {
			if name == k && i < len(tuple.Columns) {
				b = strconv.AppendQuote(b, string(tuple.Columns[i].Data))
				found = true
				break
			}
		}
		if !found {
			return ""
		}
	}
	return string(b)
}
