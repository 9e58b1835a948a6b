package notify

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"

	rtsql "github.com/budget-rt/gateway/sql"
)

// Follower keeps up with the event log: it LISTENs for the commit doorbell on
// a dedicated connection, and on every ring, every (re)connect and every
// PollInterval it reads the log after its cursor and publishes what it finds.
// The table is the truth; a lost notification only delays an event until the
// next read, it never loses it.
type Follower struct {
	Store *Store
	// Connect opens the LISTEN connection. Required.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Publish receives events in commit order, from one goroutine. It must not
	// block for long: the next read waits for it.
	Publish func([]Event)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// PollInterval is the safety poll; zero means 2 s.
	PollInterval time.Duration
	// From is the position to read after: the head of what was published
	// before Run (the preloaded replay window).
	From Position
	// Trim, when set, is told the oldest commit sequence in the log at every
	// safety poll, so the replay window follows pruning done by any replica.
	Trim func(oldest int64)
	// ReadTimeout bounds one read of the log; zero means 10 s. Without it a
	// read on a pooled connection whose peer vanished without a FIN (a cut
	// network, a frozen server) would hang until TCP gives up, minutes later,
	// while /readyz kept saying ready.
	ReadTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered, doubling delay between
	// reconnect attempts; zero means 100 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration

	wake chan struct{}

	mu        sync.Mutex
	listening bool   // LISTEN is active on a live connection
	listenGen uint64 // bumped after each successful LISTEN
	readGen   uint64 // listenGen as of the start of the last clean catch-up
	readErr   error  // last read failure, nil once a read succeeds
	failures  int    // consecutive connect failures, for the backoff
	cursor    Position

	// LISTEN heartbeat: a connection that died without a FIN (a cut network)
	// would wait for notifications forever, so each poll the follower
	// NOTIFYs itself and expects to hear it back.
	conn     *pgx.Conn // the current LISTEN connection
	beatID   uint64    // this follower's heartbeat sender id; 0 until the first
	beatN    int64
	beatSeen time.Time // when the connection last proved alive

	// Commit sequences heard that were ahead of the cursor, to be judged
	// (real, or never issued) after the read they rang for.
	heard   []heardSeq
	badNote tally // bad notifications, by kind
}

// heardSeq is a commit sequence some backend notified.
type heardSeq struct {
	seq int64
	pid uint32 // the notifying backend, to find who sends bad ones
}

// maxHeard bounds the sequences kept for judging between two reads. A
// burst of real commits can exceed it; the ones beyond are not judged.
const maxHeard = 1024

// Stats counts the bad input the follower has skipped since it started, by
// kind, for metrics. The first of each kind was logged as a warning.
type Stats struct {
	BadNotifications map[string]uint64 // BadNotify*: payloads on the channel that are not ours
	BadRows          map[string]uint64 // BadRow*: rows of the log the gateway cannot use (Store.BadRows)
}

// Stats returns the counts of bad input skipped so far.
func (f *Follower) Stats() Stats {
	return Stats{BadNotifications: f.badNote.snapshot(), BadRows: f.Store.BadRows()}
}

// Status is a snapshot of the follower's health, for readiness and metrics.
type Status struct {
	Listening bool     // the LISTEN connection is up
	CaughtUp  bool     // a read finished after the latest (re)connect, and none failed since
	Cursor    Position // the last position published
	Err       error    // why it is not ready, when it is not
	Listens   uint64   // successful LISTENs since Run began: reconnects are Listens-1
}

// Ready reports whether the follower is listening and caught up.
func (s Status) Ready() bool { return s.Listening && s.CaughtUp }

// Status returns the follower's current health.
func (f *Follower) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{Listening: f.listening, Cursor: f.cursor, Err: f.readErr, Listens: f.listenGen}
	st.CaughtUp = f.readErr == nil && f.listenGen > 0 && f.readGen == f.listenGen
	if st.Err == nil && !st.Listening {
		st.Err = fmt.Errorf("LISTEN connection is down")
	} else if st.Err == nil && !st.CaughtUp {
		st.Err = fmt.Errorf("catching up after (re)connect")
	}
	return st
}

// Run follows the log until ctx ends. It returns nil on cancellation.
func (f *Follower) Run(ctx context.Context) error {
	if f.Logger == nil {
		f.Logger = slog.Default()
	}
	if f.PollInterval <= 0 {
		f.PollInterval = 2 * time.Second
	}
	if f.ReadTimeout <= 0 {
		f.ReadTimeout = 10 * time.Second
	}
	if f.MinBackoff <= 0 {
		f.MinBackoff = 100 * time.Millisecond
	}
	if f.MaxBackoff <= 0 {
		f.MaxBackoff = 5 * time.Second
	}
	f.wake = make(chan struct{}, 1)
	f.mu.Lock()
	f.cursor = f.From
	f.mu.Unlock()

	l := &pgxlisten.Listener{
		Connect: f.connect,
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() != nil {
				return
			}
			f.mu.Lock()
			f.listening = false
			f.mu.Unlock()
			f.Logger.Warn("listen connection lost", "err", err)
		},
		// Delays are ours (connect backs off with jitter); the library's default
		// would wait a minute before reconnecting.
		ReconnectDelay: -1,
	}
	l.Handle(rtsql.Channel, (*doorbell)(f))

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = l.Listen(ctx) // returns only when ctx ends
	}()
	defer func() { <-done }()

	// The heartbeat has its own goroutine: when the whole network path is
	// silent, the reads below hang on a dead pooled connection, and a
	// heartbeat run between them would never get to notice.
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		beat := time.NewTicker(f.PollInterval)
		defer beat.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-beat.C:
				f.heartbeat(ctx)
			}
		}
	}()
	defer func() { <-beatDone }()

	tick := time.NewTicker(f.PollInterval)
	defer tick.Stop()
	// retry re-reads soon after a failed read (a pooled connection that died
	// under it, say) instead of waiting for the next ring or poll.
	retry := time.NewTimer(0)
	<-retry.C
	failures := 0
	for {
		f.mu.Lock()
		heard := len(f.heard) // sequences notified before this read
		f.mu.Unlock()
		if f.catchUp(ctx) {
			failures = 0
			f.judge(ctx, heard)
		} else {
			failures++
			retry.Reset(f.backoff(failures))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-f.wake:
		case <-tick.C:
			if f.Trim != nil {
				rctx, cancel := context.WithTimeout(ctx, f.ReadTimeout)
				if oldest, err := f.Store.Oldest(rctx); err == nil && oldest > 0 {
					f.Trim(oldest)
				}
				cancel()
			}
		case <-retry.C:
		}
	}
}

// backoff is a doubling delay with jitter: between MinBackoff and
// MaxBackoff, so replicas that lost the same database do not retry in
// lockstep.
func (f *Follower) backoff(failures int) time.Duration {
	d := min(f.MinBackoff<<min(failures-1, 16), f.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// heartbeat checks that the LISTEN connection still hears, then rings it
// once more. A connection silent for three polls is closed, so pgxlisten
// reconnects (and catches up) instead of waiting on a dead socket.
func (f *Follower) heartbeat(ctx context.Context) {
	f.mu.Lock()
	conn, listening, seen := f.conn, f.listening, f.beatSeen
	if f.beatID == 0 {
		f.beatID = rand.Uint64() | 1
	}
	f.beatN++
	payload := formatBeat(f.beatID, f.beatN)
	f.mu.Unlock()
	if !listening || conn == nil {
		return
	}
	limit := 3*f.PollInterval + time.Second
	if silent := time.Since(seen); silent > limit {
		f.Logger.Warn("listen connection silent; reconnecting", "silent", silent.Round(time.Millisecond))
		f.mu.Lock()
		f.listening = false
		f.mu.Unlock()
		_ = conn.PgConn().Conn().Close() // unblocks WaitForNotification
		return
	}
	// Bounded, so a send stuck on a dead pooled connection does not keep
	// the next check from running.
	sctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if _, err := f.Store.Pool.Exec(sctx, `SELECT pg_notify($1, $2)`, rtsql.Channel, payload); err != nil && ctx.Err() == nil {
		f.Logger.Debug("send listen heartbeat", "err", err)
	}
}

// heardBeat records a heartbeat (of any replica) when it is this
// follower's own. Any of its own counts, not only the last one sent: on a
// slow network an echo can arrive after the next heartbeat has gone out, and
// it still proves the connection hears.
func (f *Follower) heardBeat(p payload) {
	f.mu.Lock()
	if p.beat == f.beatID {
		f.beatSeen = time.Now()
	}
	f.mu.Unlock()
}

// heardSeq keeps a notified commit sequence that is ahead of the cursor, for
// judge to check after the read.
func (f *Follower) heardSeq(seq int64, pid uint32) {
	f.mu.Lock()
	if seq > f.cursor.Seq && len(f.heard) < maxHeard {
		f.heard = append(f.heard, heardSeq{seq: seq, pid: pid})
	}
	f.mu.Unlock()
}

// judge runs after a read that caught up, on the first n sequences heard:
// those notified before the read began. A real notification is delivered
// after its commit, so that read saw the commit; if the sequence is still
// ahead of the cursor it was pruned first, or never issued at all: a
// NOTIFY from something else, which the sequence itself tells. Sequences
// heard during the read are judged after the next one, so a steady stream
// of commits costs no query here.
func (f *Follower) judge(ctx context.Context, n int) {
	f.mu.Lock()
	cursor := f.cursor.Seq
	var ahead []heardSeq
	for _, h := range f.heard[:n] {
		if h.seq > cursor {
			ahead = append(ahead, h)
		}
	}
	f.heard = append(f.heard[:0], f.heard[n:]...)
	f.mu.Unlock()
	if len(ahead) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, f.ReadTimeout)
	issued, err := f.Store.issued(rctx)
	cancel()
	if err != nil {
		f.mu.Lock()
		f.heard = append(f.heard, ahead[:min(len(ahead), maxHeard-len(f.heard))]...) // judged after the next read
		f.mu.Unlock()
		return
	}
	for _, h := range ahead {
		if h.seq > issued {
			f.badNote.add(f.Logger, "ignoring a notification on the gateway's channel", BadNotifyFuture,
				"channel", rtsql.Channel, "payload", strconv.FormatInt(h.seq, 10), "issued", issued, "sender_pid", h.pid)
		}
	}
}

// catchUp reads and publishes until the log has nothing after the cursor. It
// reports whether it got there.
func (f *Follower) catchUp(ctx context.Context) bool {
	f.mu.Lock()
	gen, cursor := f.listenGen, f.cursor
	f.mu.Unlock()
	for {
		rctx, cancel := context.WithTimeout(ctx, f.ReadTimeout)
		evs, next, more, err := f.Store.After(rctx, cursor)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return true
			}
			f.mu.Lock()
			first := f.readErr == nil
			f.readErr = err
			f.mu.Unlock()
			if first {
				f.Logger.Warn("read event log", "err", err)
			}
			return false
		}
		if len(evs) > 0 {
			f.Publish(evs)
		}
		f.mu.Lock()
		f.cursor = next
		// Nothing more: the page was not full, or was empty (a page of bad
		// rows only still moves on). A commit after the read rings again.
		if !more || next == cursor {
			if f.readErr != nil {
				f.Logger.Info("event log readable again")
			}
			f.readErr = nil
			f.readGen = gen
			f.mu.Unlock()
			return true
		}
		f.mu.Unlock()
		cursor = next
	}
}

// connect opens the LISTEN connection, waiting first when earlier attempts
// failed: a doubling delay with full jitter, so replicas that lost the same
// database do not reconnect in lockstep.
func (f *Follower) connect(ctx context.Context) (*pgx.Conn, error) {
	f.mu.Lock()
	n := f.failures
	f.mu.Unlock()
	if n > 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(f.backoff(n)):
		}
	}
	conn, err := f.Connect(ctx)
	f.mu.Lock()
	if err != nil {
		f.failures++
	} else {
		f.failures = 0
		f.conn = conn
	}
	f.mu.Unlock()
	return conn, err
}

func (f *Follower) ring() {
	select {
	case f.wake <- struct{}{}:
	default: // a read is already due
	}
}

// doorbell is the pgxlisten handler. It only rings: the read happens on the
// Run goroutine with a pooled connection, so the LISTEN loop never waits.
// A payload that is neither a commit sequence nor a heartbeat does not ring
// (see parsePayload): it is counted and skipped.
type doorbell Follower

func (d *doorbell) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	f := (*Follower)(d)
	p, bad := parsePayload(n.Payload)
	switch {
	case bad != "":
		f.badNote.add(f.Logger, "ignoring a notification on the gateway's channel", bad,
			"channel", n.Channel, "payload", clip(n.Payload), "sender_pid", n.PID)
	case p.beat != 0:
		f.heardBeat(p)
	default:
		f.heardSeq(p.seq, n.PID)
		f.ring()
	}
	return nil
}

// HandleBacklog runs right after each LISTEN: whatever committed while the
// connection was down is in the table, so a read now closes the gap.
func (d *doorbell) HandleBacklog(context.Context, string, *pgx.Conn) error {
	f := (*Follower)(d)
	f.mu.Lock()
	f.listening = true
	f.listenGen++
	f.failures = 0
	f.beatSeen = time.Now()
	f.mu.Unlock()
	f.Logger.Info("listening", "channel", rtsql.Channel)
	f.ring()
	return nil
}
