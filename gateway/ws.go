package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/budget-rt/gateway/notify"
)

// wsTransport serves the WebSocket endpoint.
//
// The transport is our own, on gorilla/websocket (handshake, framing,
// reading, close handling), rather than melody, which it used to be:
// melody costs 32-34 KiB of server memory per idle connection, and one
// write(2) per frame, where this gateway aims at 12 KiB and at most 6
// microseconds of CPU per delivery (issue 6; the measured figures are in
// the README's "Transport benchmarks"). Per connection, melody keeps two
// goroutines (a reader, and a writer that waits on its queue even when
// there is nothing to write); runs its read loop inside the HTTP handler,
// so net/http's per-connection buffers and the *http.Request stay alive as
// long as the socket; allocates its queue of MessageBufferSize envelopes
// up front; and keeps gorilla's default 4 KiB read and write buffers. Here
// the handler returns right after the upgrade (the read loop runs in a
// goroutine of its own, so net/http frees its buffers and the request,
// and that goroutine ends while the connection is idle),
// gorilla gets small buffers, and the queue is a slice. Events are not
// written through gorilla: each event's frame is built once, header
// included, and a few fan-out workers shared by all connections write it
// straight into every socket that has room, with everything else queued
// for that socket in the same write(2); only a socket without room gets a
// goroutine of its own until it drains (see fanout, wsConn and corkConn).
// gorilla still does the handshake and reads the data and close frames;
// ping and pong frames are taken out before it (wsread.go), so that an
// idle connection's reader can park, leaving it no goroutine at all
// (idlePoller).
// The flow control is the hub's (credit, lagging clients pulling from the
// window), as it was with melody.
type wsTransport struct {
	hub          *Hub
	auth         *Auth
	log          *slog.Logger
	up           websocket.Upgrader
	conns        *registry
	addrs        *addrSlots
	clients      clientAddrs
	writeTimeout time.Duration
	queue        int32
	maxMessage   int64
	msgRate      rate.Limit
	msgBurst     int
	bodyTimeout  time.Duration // to read the body of /ws/disconnect
	metrics      *metrics
	fan          *fanout
}

// controlMargin is room in a connection's queue beyond the events' credit,
// for the transport's own frames (ping, pong, online_status).
const controlMargin = 8

// readBufferSize holds a client's small messages (pings, subscriptions) in
// one read; larger ones, up to GATEWAY_MAX_MESSAGE_BYTES, take several.
const readBufferSize = 512

// writeBufferSize is gorilla's write buffer, of each connection. A frame
// is copied into it up to its size and the rest is written from the
// frame's own bytes, so a small one costs little memory and no extra
// system call (those are saved by corkConn). gorilla's pooled buffers
// would cost an allocation per frame (it boxes each into an interface to
// give it back).
const writeBufferSize = 256

func newWS(hub *Hub, logger *slog.Logger, opt Options, addrs *addrSlots) *wsTransport {
	perUser := opt.MaxConnsPerUser
	if opt.Auth.Open() {
		perUser = 0 // everyone is user 0: only the total limit means anything
	}
	t := &wsTransport{hub: hub, auth: opt.Auth, log: logger, writeTimeout: opt.WriteTimeout,
		conns: newRegistry(perUser, opt.MaxConns), addrs: addrs, clients: clientAddrs{trusted: opt.TrustedProxies},
		queue: int32(opt.SendQueue), maxMessage: opt.MaxMessageBytes, msgRate: rate.Inf, msgBurst: opt.MessageBurst,
		fan: newFanout(!opt.NoIOURing)}
	if opt.MessageRate > 0 {
		t.msgRate = rate.Limit(opt.MessageRate)
	}
	if !opt.NoIOURing {
		if err := uringUsable(); err != nil {
			t.fan.uring = false
			logger.Info("websocket writes: one write(2) per socket, io_uring is not available", "err", err)
		}
	}
	t.up = websocket.Upgrader{
		ReadBufferSize:  readBufferSize,
		WriteBufferSize: writeBufferSize,
		// A page on another site must not read a user's events with their
		// cookie-fetched token.
		CheckOrigin: originChecker(opt.AllowedOrigins),
		// Only bounds writing the 101 answer: the request's headers are
		// bounded by the server's ReadHeaderTimeout.
		HandshakeTimeout: opt.HandshakeTimeout,
		// Off by default; on, gorilla agrees to permessage-deflate without
		// context takeover, so an event compresses the same for every
		// connection and is compressed once (entry.deflated).
		EnableCompression: opt.Compression,
	}
	return t
}

func (t *wsTransport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Refusals happen before the upgrade, as HTTP 403: the app's client then
	// sees a failed connection and retries with a fresh token. Accepting and
	// closing with 4001 would stop it for good.
	if !t.up.CheckOrigin(r) {
		t.log.Info("websocket refused", "reason", "origin not allowed", "origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
		http.Error(w, "forbidden: origin not allowed", http.StatusForbidden)
		return
	}
	user, err := t.auth.WSToken(r.Context(), r.URL.Query().Get("token"))
	if err != nil {
		t.log.Info("websocket refused", "reason", err, "remote", r.RemoteAddr)
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	sub, err := ParseQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// The start position is taken before the upgrade: every event committed
	// after the handshake completes is after it, so none can slip past while
	// the connection is being set up.
	from, err := t.hub.Head()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	c := &wsConn{id: uuid.NewString(), user: user, t: t, last: r.URL.Query().Get("last_event_id"), from: from, sub: sub,
		addr: t.clients.of(r), rate: rate.NewLimiter(t.msgRate, t.msgBurst), batch: r.URL.Query().Get("batch") == "1",
		max: t.queue + controlMargin, writing: true} // the attach writes first; see connect
	if err := t.conns.reserve(c); err != nil {
		t.log.Info("websocket refused", "reason", err, "user", user.ID)
		http.Error(w, "forbidden: "+err.Error(), http.StatusForbidden)
		return
	}
	if !t.addrs.acquire(c.addr) {
		t.conns.release(c)
		t.log.Info("websocket refused", "reason", "too many connections from this address", "addr", c.addr, "limit", t.addrs.max)
		http.Error(w, fmt.Sprintf("forbidden: too many connections from this address (%d at most)", t.addrs.max), http.StatusForbidden)
		return
	}
	cw := &corkingWriter{ResponseWriter: w}
	ws, err := t.up.Upgrade(cw, r, nil)
	if err != nil {
		t.release(c) // gorilla has answered with an HTTP error
		t.log.Debug("websocket upgrade", "err", err)
		return
	}
	c.ws, c.sock, c.zip = ws, cw.conn, cw.conn.deflate
	c.sock.rd.ctl = func(op byte, payload []byte) { t.answerControl(c, op, payload) }
	c.sock.onClose = c.wake
	// The handler returns now, so that net/http lets go of the request and
	// its per-connection buffers; the connection lives on in its reader.
	// The attach has a context of its own: the request's ends with the
	// handler.
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go t.serve(ctx, c)
}

// serve runs one connection: the attach, then the read loop, then the
// cleanup.
func (t *wsTransport) serve(ctx context.Context, c *wsConn) {
	c.ws.SetReadLimit(t.maxMessage) // over it, gorilla sends 1009 and the read fails
	t.connect(ctx, c)
	c.lastPong.Store(time.Now().UnixNano()) // the first ping is half a pingPeriod away or more
	_ = c.ws.SetReadDeadline(time.Now().Add(pongWait))
	c.armPing()
	t.reading(c)
}

// reading runs the read loop, then cleans up, unless the reader parked:
// the connection then lives on without it, and the reader started when
// its socket turns readable (or is closed) carries on.
func (t *wsTransport) reading(c *wsConn) {
	if !t.read(c) {
		t.finish(c)
	}
}

// answerControl answers a client's ping and notes its pong: corkConn takes
// them out of what gorilla reads (wsread.go).
func (t *wsTransport) answerControl(c *wsConn, op byte, payload []byte) {
	switch op {
	case opPong:
		now := time.Now()
		c.lastPong.Store(now.UnixNano())
		if !c.readClosing.Load() {
			_ = c.sock.SetReadDeadline(now.Add(pongWait))
		}
	case opPing:
		// Control pings cost a pong each: they count against the message
		// rate like data messages. (Browsers never send them.) A failed
		// pong is the read's to notice.
		if t.allow(c) {
			_ = c.ws.WriteControl(websocket.PongMessage, payload, time.Now().Add(time.Second))
		}
	}
}

// read runs the connection's read loop until the socket fails or closes
// (false), or until it finds nothing to read between two messages and
// parks the connection (true). The read deadline (a pong within pongWait,
// or closeGrace once closing) bounds every wait inside gorilla.
func (t *wsTransport) read(c *wsConn) (parked bool) {
	ws := c.ws
	for {
		// Closing is looked at after between, whose pings may have
		// tripped the message rate (allow): a closing reader waits under
		// closeGrace, which a parked one would not.
		if idle.usable() && !c.sock.between() && !c.readClosing.Load() && !c.cut.Load() && idle.park(c) {
			return true
		}
		typ, msg, err := ws.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				c.why.set(whyTooBig)      // metrics: gorilla sent it 1009
				c.readClosing.Store(true) // pongs read meanwhile must not move the deadline on
				// The rest of the message is unread: closing now would
				// reset the connection and the client could lose the close
				// frame. Drop what comes until it answers (gorilla's client
				// closes then), at most closeGrace, as closeFromReader does.
				_ = c.sock.SetReadDeadline(time.Now().Add(closeGrace))
				_, _ = io.Copy(io.Discard, c.sock)
			}
			return false
		}
		switch typ {
		case websocket.TextMessage:
			t.message(c, msg)
		case websocket.BinaryMessage:
			t.binary(c, msg)
		}
	}
}

// finish cleans up after the read loop: the socket, the hub, the limits.
// A write still stuck in the socket is cut: the client is gone, or has
// already been sent its close frame.
func (t *wsTransport) finish(c *wsConn) {
	idle.forget(c)
	c.stop()
	_ = c.sock.cut(time.Now())
	_ = c.ws.Close()
	c.mu.Lock()
	c.q, c.spare = nil, nil
	c.mu.Unlock()
	if c.client != nil {
		t.hub.Detach(c.client)
		t.metrics.disconnected(transportWS, c.why.get())
	}
	t.release(c)
}

// closeAll closes, with 1001, the connections not yet attached to the hub
// at shutdown (the hub closes the others). It does not wait: a stalled
// client must not hold up the exit.
func (t *wsTransport) closeAll() {
	for _, c := range t.conns.all() {
		if !c.client.gone.Load() {
			go c.close(CloseGoingAway, ReasonShutdown)
		}
	}
}

// release frees c's places under the limits.
func (t *wsTransport) release(c *wsConn) {
	t.conns.release(c)
	t.addrs.release(c.addr)
}

// originChecker allows requests without an Origin (not from a browser),
// from the listed origins, or, with no list, from the request's own host.
func originChecker(allowed []string) func(r *http.Request) bool {
	set := map[string]bool{}
	for _, o := range allowed {
		set[strings.ToLower(strings.TrimRight(o, "/"))] = true
	}
	return func(r *http.Request) bool {
		origin := r.Header.Get("Origin")
		if origin == "" {
			return true
		}
		if len(set) > 0 {
			return set[strings.ToLower(origin)]
		}
		u, err := url.Parse(origin)
		return err == nil && strings.EqualFold(u.Host, r.Host)
	}
}

// connect writes the connected frame and the replay directly and
// synchronously, while live events wait in the queue behind them; the
// writer starts after it. It runs before the read loop, as melody's
// connect hook did, so no client message is answered before the replay.
func (t *wsTransport) connect(ctx context.Context, c *wsConn) {
	c.client = &c.cl
	c.cl.init(c, int(t.queue), c.sub, t.hub.Viewer(c.user))
	t.conns.attach(c)
	err := c.write(controlFrame("connected", "", map[string]any{"user_id": c.user.ID, "connection_id": c.id}, time.Now()))
	if err == nil {
		// The socket is corked since the upgrade: the answer to it and the
		// connected frame go out now, in one write, and not behind a replay
		// from the log, which may take a database read. The replay is
		// gathered into large writes too.
		err = c.sock.flushGathered()
	}
	if err == nil {
		err = t.hub.Attach(ctx, c.client, c.last, c.from, c)
		if ferr := c.sock.uncork(); err == nil {
			err = ferr
		}
	}
	if err != nil {
		code := websocket.CloseInternalServerErr
		if errors.Is(err, errClosing) {
			code = CloseGoingAway
		}
		c.close(code, "could not attach: retry with your last id")
		t.log.Debug("websocket attach", "err", err)
		return
	}
	c.startWriter()
}

// control queues one of the transport's own frames behind the events
// already queued. It counts against the connection's credit like an event.
func (t *wsTransport) control(c *wsConn, e *entry) {
	c.client.inflight.Add(1)
	if !c.send(e) {
		t.hub.kickSlow(c.client)
	}
}

func resetFrame(reason string, head notify.Position) []byte {
	id := ""
	if !head.IsZero() {
		id = head.String()
	}
	return controlFrame("reset", id, map[string]string{"reason": reason}, time.Now())
}

func closeMessage(code int, reason string) []byte { return websocket.FormatCloseMessage(code, reason) }
