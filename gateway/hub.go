package gateway

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// Log is the durable event log the hub replays from when a client resumes
// from a position older than its memory holds. notify.Store implements it.
type Log interface {
	// Replay calls fn with the events in (after, upTo], in order; it fails
	// with notify.ErrExpired or notify.ErrUnknown when after is not an event
	// still in the log. With upTo <= after it only checks after.
	Replay(ctx context.Context, after, upTo notify.Position, fn func([]notify.Event) error) error
}

// Close codes and reasons the gateway sends. 4000-4999 is the private range;
// 4001 is avoided on purpose: the app's client treats it as "stop for good".
const (
	CloseGoingAway = 1001 // shutdown: reconnect elsewhere with the last id
	ClosePolicy    = 1008 // the client sent messages faster than GATEWAY_MESSAGE_RATE allows
	CloseTooBig    = 1009 // the client sent a message over GATEWAY_MAX_MESSAGE_BYTES (gorilla sends it)
	CloseSlow      = 4008 // the send queue overflowed: reconnect with the last id
)

// Reasons sent with the close codes.
const (
	ReasonSlow     = "slow consumer: reconnect with your last id"
	ReasonRate     = "too many messages: slow down"
	ReasonShutdown = "server shutting down"
)

// Reasons a resume ends in a reset frame instead of a replay.
const (
	ResetExpired = "expired" // the id is older than the event log keeps
	ResetUnknown = "unknown" // the id was never issued by this event log
	ResetInvalid = "invalid" // the id is not in the form the gateway issues
)

var (
	errNotReady = errors.New("gateway is starting: event log not loaded yet")
	errClosing  = errors.New("gateway is shutting down")
)

// sink is one connection's way out. send never blocks: it queues the entry
// or reports that the queue is full. close disconnects the client; it runs
// on its own goroutine, never under the hub's lock.
type sink interface {
	send(e *entry) bool
	close(code int, reason string)
}

// emitter writes a client's replay synchronously, before its live queue
// drains, so the replay can be any length and never interleaves with live
// events.
type emitter interface {
	event(e *entry) error
	reset(reason string, head notify.Position) error
}

// client is one subscriber of any transport.
//
// Flow control is by credit: a client may have at most limit frames queued
// in its transport. When its queue is full the hub stops pushing and marks
// it lagging; the transport pulls the rest from the replay window (refill)
// as its queue drains. So a burst larger than the queue (a 10,000-row
// statement) slows nobody down and disconnects nobody, and a client is cut
// as slow only when it falls out of the window: then its events would be
// gone, and it must resume from the log.
type client struct {
	sink     sink
	limit    int32        // frames it may have queued
	inflight atomic.Int32 // frames queued, not yet written
	lagging  atomic.Bool  // its queue filled; it pulls from the window
	gone     atomic.Bool  // kicked or detached: send nothing more

	// Guarded by Hub.mu once attached.
	subs  []*Subscription // what it asked for: the union of these
	all   bool            // one of subs is everything (setSubs): most clients
	view  viewer          // what its user may see
	after notify.Position // every event it wants up to here was handed over
	keys  []string        // its index keys
	cols  []string        // where columns among them
	mark  uint64          // the last event the index offered it
}

// newClient makes a client with the subscription it connected with.
func newClient(k sink, limit int, sub *Subscription, view viewer) *client {
	c := new(client)
	c.init(k, limit, sub, view)
	return c
}

// init makes c, in place, a client with the subscription it connected
// with: a transport may keep its client within its own connection object.
func (c *client) init(k sink, limit int, sub *Subscription, view viewer) {
	c.sink, c.limit, c.view = k, int32(limit), view
	c.setSubs([]*Subscription{sub})
}

// setSubs sets c's subscriptions. A fan-out asks every client whether it
// wants the event: for the usual client, subscribed to everything, the
// answer is then on the client itself, without another object to read.
func (c *client) setSubs(subs []*Subscription) {
	c.subs, c.all = subs, false
	for _, s := range subs {
		if s.everything() {
			c.all = true
		}
	}
}

// wants reports whether c asked for e and may see it.
func (c *client) wants(e *entry) bool {
	if !c.view.visible(e) {
		return false
	}
	if c.all {
		return true
	}
	for _, s := range c.subs {
		if s.match(e) {
			return true
		}
	}
	return false
}

// sent is called by the transport after it wrote a queued frame. It reports
// whether the client should pull more from the window now: it is lagging
// and its queue is half empty.
func (c *client) sent() bool {
	n := c.inflight.Add(-1)
	return c.lagging.Load() && n <= c.limit/2
}

// Hub fans events out to clients and keeps the replay window.
type Hub struct {
	log  *slog.Logger
	logs Log

	mu      sync.Mutex
	loaded  bool
	closing bool
	ring    ring
	floor   notify.Position // the ring holds every event after floor
	head    notify.Position
	clients map[*client]struct{}
	index   index
	lagging map[*client]struct{} // clients pulling from the window
	stamp   uint64               // counts published events, for client.mark
	rules   []Rule
	kicks   sync.WaitGroup
	changed chan struct{} // closed and replaced by each Publish, for long-polls
	metrics *metrics      // nil in tests of the hub alone
}

// NewHub returns a hub keeping window events in memory and enforcing the
// visibility rules.
func NewHub(logger *slog.Logger, logs Log, window int, rules []Rule) *Hub {
	return &Hub{log: logger, logs: logs, ring: newRing(window), clients: map[*client]struct{}{},
		index: newIndex(rules), lagging: map[*client]struct{}{}, rules: rules, changed: make(chan struct{})}
}

// Viewer returns what u may see under the hub's rules.
func (h *Hub) Viewer(u User) viewer { return newViewer(h.rules, u) }

// Load sets the replay window from the newest events of the log (oldest
// first) and the log's head, before any client is served. complete says the
// events are the whole log, so the window starts at its beginning.
func (h *Hub) Load(evs []notify.Event, head notify.Position, complete bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range evs {
		h.ring.push(newEntry(ev))
	}
	h.head = head
	if !complete && len(evs) > 0 {
		// Positions are not dense: "just before the first" is enough, as every
		// event after it is in the window.
		h.floor = notify.Position{Seq: evs[0].Pos.Seq, ID: evs[0].Pos.ID - 1}
	}
	h.loaded = true
}

// Head returns the position of the newest event published, the starting
// point of a client that connects now without an id.
func (h *Hub) Head() (notify.Position, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closing:
		return notify.Position{}, errClosing
	case !h.loaded:
		return notify.Position{}, errNotReady
	}
	return h.head, nil
}

// Publish appends events (in commit order, from one goroutine) to the window
// and offers each to every client that wants it. It never waits for a
// client: one with a full queue is left to pull from the window, and one
// that fell out of the window is disconnected as slow.
func (h *Hub) Publish(evs []notify.Event) {
	h.metrics.receivedN(len(evs))
	var slow []*client
	h.mu.Lock()
	for _, ev := range evs {
		if ev.Pos.Compare(h.head) <= 0 {
			continue // already published; the follower's cursor makes this rare
		}
		e := newEntry(ev)
		evicted := h.ring.push(e)
		if evicted != nil {
			h.floor = evicted.Pos
		}
		h.head = ev.Pos
		if evicted != nil {
			for c := range h.lagging {
				if c.after.Compare(h.floor) < 0 {
					slow = append(slow, c) // what it still needs is gone
					h.drop(c)
				}
			}
		}
		h.stamp++
		h.index.each(e, func(c *client) {
			if c.mark == h.stamp || c.lagging.Load() {
				return
			}
			c.mark = h.stamp
			if ev.Pos.Compare(c.after) > 0 && c.wants(e) && !h.queue(c, e) {
				slow = append(slow, c)
				h.drop(c)
			}
		})
	}
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
	for _, c := range slow {
		h.log.Info("disconnecting slow client", "code", CloseSlow)
		h.kick(c, CloseSlow, ReasonSlow)
	}
}

// offer hands e to c, or marks c lagging when its queue is full. It reports
// false when the transport refused the frame. Call with h.mu held.
func (h *Hub) offer(c *client, e *entry) bool {
	if !c.wants(e) {
		c.after = e.Pos
		return true
	}
	return h.queue(c, e)
}

// queue is offer for an event c wants. Call with h.mu held.
func (h *Hub) queue(c *client, e *entry) bool {
	if c.inflight.Load() >= c.limit {
		// It has every event it wants before e (live, the index offered it
		// each; refilling, it walks the window in order).
		c.lagging.Store(true)
		h.lagging[c] = struct{}{}
		c.after = notify.Position{Seq: e.Pos.Seq, ID: e.Pos.ID - 1}
		// The transport pulls the rest as its queue drains (client.sent).
		// Had the queue drained between the check above and the Store,
		// every sent would have seen lagging false and nothing would ever
		// pull: look again, and pull on its behalf (refill waits for the
		// lock this caller holds).
		if c.inflight.Load() <= c.limit/2 {
			go h.refill(c)
		}
		return true
	}
	c.inflight.Add(1)
	if !c.sink.send(e) {
		return false
	}
	c.after = e.Pos
	return true
}

// Trim drops from the window the events of transactions before oldest, the
// oldest commit sequence the event log still holds, so that memory and table
// agree: an id the log has pruned is expired on every replica, whether or not
// its window still held it. Lagging clients that needed them are cut at the
// next Publish or refill.
func (h *Hub) Trim(oldest int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.ring.len() > 0 && h.ring.at(0).Pos.Seq < oldest {
		h.floor = h.ring.pop().Pos
	}
}

// kickSlow disconnects c as slow (its transport could not queue a frame).
func (h *Hub) kickSlow(c *client) {
	h.mu.Lock()
	_, ok := h.clients[c]
	h.drop(c)
	h.mu.Unlock()
	if ok {
		h.kick(c, CloseSlow, ReasonSlow)
	}
}

// since returns the events committed after t, from the window, for the
// long-poll: up to limit, and the rest of the last one's transaction.
// serverTime is where the next poll should start: the commit time of the
// last event returned, else of the head (commit times increase with commit
// order, so nothing committed later can be at or before it).
// changed is closed by the next Publish.
func (h *Hub) since(t time.Time, limit int, want func(*entry) bool) (evs []*entry, serverTime float64, changed <-chan struct{}, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closing:
		return nil, 0, nil, errClosing
	case !h.loaded:
		return nil, 0, nil, errNotReady
	}
	// With nothing published yet, 0: every future event is after it. Never
	// the client's own since: its clock may run ahead of the database's.
	serverTime = 0
	if h.ring.len() > 0 {
		serverTime = unixSeconds(h.ring.at(h.ring.len() - 1).Time)
		micros := t.UnixMicro()
		i := sort.Search(h.ring.len(), func(i int) bool { return h.ring.at(i).Time.UnixMicro() > micros })
		// The limit only ends a page between transactions: every event of a
		// transaction has its commit time, so the next poll (after
		// serverTime) would skip the rest of one cut in two.
		for ; i < h.ring.len(); i++ {
			e := h.ring.at(i)
			if len(evs) >= limit && e.Pos.Seq != evs[len(evs)-1].Pos.Seq {
				break
			}
			if want(e) {
				evs = append(evs, e)
			}
		}
		if len(evs) > 0 {
			serverTime = unixSeconds(evs[len(evs)-1].Time)
		}
	}
	return evs, serverTime, h.changed, nil
}

// drop removes c from the fan-out. Call with h.mu held.
func (h *Hub) drop(c *client) {
	c.gone.Store(true)
	if _, ok := h.clients[c]; ok {
		delete(h.clients, c)
		delete(h.lagging, c)
		h.index.remove(c)
	}
}

// refill pulls events after c's last one from the window into its queue,
// as far as its credit allows; the transport calls it when sent says so.
func (h *Hub) refill(c *client) {
	h.mu.Lock()
	if c.gone.Load() || !c.lagging.Load() {
		h.mu.Unlock()
		return
	}
	if c.after.Compare(h.floor) < 0 {
		h.drop(c)
		h.mu.Unlock()
		h.kick(c, CloseSlow, ReasonSlow)
		return
	}
	i := h.ring.after(c.after)
	for ; i < h.ring.len() && c.inflight.Load() < c.limit; i++ {
		if !h.offer(c, h.ring.at(i)) {
			h.drop(c)
			h.mu.Unlock()
			h.kick(c, CloseSlow, ReasonSlow)
			return
		}
	}
	if i == h.ring.len() {
		c.lagging.Store(false) // caught up: live pushes resume
		delete(h.lagging, c)
	}
	h.mu.Unlock()
}

func (h *Hub) kick(c *client, code int, reason string) {
	h.kicks.Add(1)
	go func() {
		defer h.kicks.Done()
		c.sink.close(code, reason)
	}()
}

// Attach subscribes c and writes its replay through out. A client resuming
// from last gets exactly the events after it, then live ones; one without
// last gets every event after from, the head when its request arrived (so
// nothing committed after its handshake is missed). An id that cannot be
// resumed from gets a reset frame, then live events.
func (h *Hub) Attach(ctx context.Context, c *client, last string, from notify.Position, out emitter) error {
	trusted := last == ""
	reason := ""
	if !trusted {
		p, err := notify.ParsePosition(last)
		if err != nil {
			reason = ResetInvalid
		}
		from = p
	}
	checked := false
	for {
		h.mu.Lock()
		if h.closing {
			h.mu.Unlock()
			return errClosing
		}
		if !h.loaded {
			h.mu.Unlock()
			return errNotReady
		}
		head := h.head
		var (
			replay []*entry
			fromDB bool
		)
		c.after = head
		switch {
		case reason != "":
		case from == head:
		case from.Compare(head) > 0:
			// The client saw more than this replica has published (it came
			// from a replica further ahead). Once the id is known to be real,
			// skip live events up to it.
			if !checked {
				h.mu.Unlock()
				reason = h.check(ctx, from)
				checked = true
				continue
			}
			c.after = from
		case trusted && from.Compare(h.floor) >= 0:
			replay = h.ring.slice(h.ring.after(from))
		case !trusted && h.ring.len() > 0 && from.Compare(h.ring.at(0).Pos) >= 0:
			if i, ok := h.ring.find(from); ok {
				replay = h.ring.slice(i + 1)
			} else {
				reason = ResetUnknown
			}
		default:
			fromDB = true
		}
		h.clients[c] = struct{}{}
		h.index.add(c)
		h.mu.Unlock()

		if fromDB {
			err := h.logs.Replay(ctx, from, head, func(evs []notify.Event) error {
				for _, ev := range evs {
					if e := newEntry(ev); c.wants(e) {
						if err := out.event(e); err != nil {
							return err
						}
					}
				}
				return nil
			})
			switch {
			case errors.Is(err, notify.ErrExpired):
				reason = ResetExpired
			case errors.Is(err, notify.ErrUnknown):
				reason = ResetUnknown
			case err != nil:
				h.Detach(c)
				return err
			}
		}
		if reason != "" {
			h.metrics.reset(reason)
			if err := out.reset(reason, head); err != nil {
				h.Detach(c)
				return err
			}
			return nil
		}
		for _, e := range replay {
			if c.wants(e) {
				if err := out.event(e); err != nil {
					h.Detach(c)
					return err
				}
			}
		}
		h.metrics.resumed(!trusted, fromDB)
		return nil
	}
}

// check asks the log whether p is an event it holds, and returns the reset
// reason when it is not.
func (h *Hub) check(ctx context.Context, p notify.Position) string {
	err := h.logs.Replay(ctx, p, notify.Position{}, nil)
	switch {
	case err == nil:
		return ""
	case errors.Is(err, notify.ErrExpired):
		return ResetExpired
	case errors.Is(err, notify.ErrUnknown):
		return ResetUnknown
	}
	h.log.Warn("check resume position", "id", p.String(), "err", err)
	return ResetUnknown
}

// Detach unsubscribes c.
func (h *Hub) Detach(c *client) {
	h.mu.Lock()
	h.drop(c)
	h.mu.Unlock()
}

// Len returns the number of attached clients.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// Close refuses new clients and disconnects every attached one with 1001,
// waiting (at most until ctx ends) for the close frames to be written.
func (h *Hub) Close(ctx context.Context) {
	h.mu.Lock()
	h.closing = true
	for c := range h.clients {
		c.gone.Store(true)
		h.kick(c, CloseGoingAway, ReasonShutdown)
	}
	clear(h.clients)
	clear(h.lagging)
	h.index = newIndex(h.rules)
	h.mu.Unlock()
	done := make(chan struct{})
	go func() { h.kicks.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
	}
}

// resubscribe changes c's subscriptions with change and re-files it in the
// index. ack runs under the hub's lock, after the change: what it queues
// comes before any event filtered by the new subscriptions. It must only
// queue (never call back into the hub).
func (h *Hub) resubscribe(c *client, change func([]*Subscription) ([]*Subscription, error), ack func([]*Subscription, error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	subs, err := change(c.subs)
	if err == nil {
		_, attached := h.clients[c]
		if attached {
			h.index.remove(c)
		}
		c.setSubs(subs)
		if attached {
			h.index.add(c)
		}
	}
	ack(c.subs, err)
}
