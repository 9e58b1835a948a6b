package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"golang.org/x/time/rate"

	"github.com/budget-rt/gateway/notify"
)

// keyConn is the melody session key of the connection's *wsConn.
const keyConn = "rtgw.conn"

// wsConn is one WebSocket connection: who it is, and its hub client.
type wsConn struct {
	id     string // connection_id, for /ws/disconnect
	user   User
	client *client
	s      *melody.Session
	last   string          // ?last_event_id=
	from   notify.Position // the head before the upgrade
	sub    *Subscription   // from the query: what it starts subscribed to
	nsub   int             // subscriptions it named, for ids of unnamed ones
	addr   netip.Addr      // the client's address, for the per-address limit
	rate   *rate.Limiter   // the client's messages
	cut    atomic.Bool     // closed for breaking a limit: ignore what it sent after
}

// wsTransport serves the WebSocket endpoint with melody.
type wsTransport struct {
	hub          *Hub
	auth         *Auth
	log          *slog.Logger
	m            *melody.Melody
	conns        *registry
	addrs        *addrSlots
	clients      clientAddrs
	writeTimeout time.Duration
	queue        int32
	msgRate      rate.Limit
	msgBurst     int
	bodyTimeout  time.Duration // to read the body of /ws/disconnect
	metrics      *metrics
}

// controlMargin is room in a session's queue beyond the events' credit, for
// the transport's own frames (ping, pong, online_status).
const controlMargin = 8

func newWS(hub *Hub, logger *slog.Logger, opt Options, addrs *addrSlots) *wsTransport {
	perUser := opt.MaxConnsPerUser
	if opt.Auth.Open() {
		perUser = 0 // everyone is user 0: only the total limit means anything
	}
	t := &wsTransport{hub: hub, auth: opt.Auth, log: logger, m: melody.New(), writeTimeout: opt.WriteTimeout,
		conns: newRegistry(perUser, opt.MaxConns), addrs: addrs, clients: clientAddrs{trusted: opt.TrustedProxies},
		queue: int32(opt.SendQueue), msgRate: rate.Inf, msgBurst: opt.MessageBurst}
	if opt.MessageRate > 0 {
		t.msgRate = rate.Limit(opt.MessageRate)
	}
	// melody's upgrader accepts every origin; a page on another site must
	// not read a user's events with their cookie-fetched token.
	t.m.Upgrader.CheckOrigin = originChecker(opt.AllowedOrigins)
	// Only bounds writing the 101 answer: the request's headers are bounded
	// by the server's ReadHeaderTimeout.
	t.m.Upgrader.HandshakeTimeout = opt.HandshakeTimeout
	t.m.Config.MessageBufferSize = opt.SendQueue + controlMargin
	t.m.Config.WriteWait = opt.WriteTimeout
	// Over the limit, gorilla sends 1009 and stops reading the message.
	t.m.Config.MaxMessageSize = opt.MaxMessageBytes
	t.m.HandleConnect(t.connect)
	t.m.HandleDisconnect(t.disconnect)
	t.m.HandleError(t.error)
	t.m.HandleSentMessage(t.sent)
	t.m.HandleMessage(t.message)
	t.m.HandleMessageBinary(t.binary)
	return t
}

func (t *wsTransport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Refusals happen before the upgrade, as HTTP 403: the app's client then
	// sees a failed connection and retries with a fresh token. Accepting and
	// closing with 4001 would stop it for good.
	if !t.m.Upgrader.CheckOrigin(r) {
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
	c := &wsConn{id: uuid.NewString(), user: user, last: r.URL.Query().Get("last_event_id"), from: from, sub: sub,
		addr: t.clients.of(r), rate: rate.NewLimiter(t.msgRate, t.msgBurst)}
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
	if err := t.m.HandleRequestWithKeys(w, r, map[string]any{keyConn: c}); err != nil {
		t.release(c) // no session: the disconnect hook will not run
		t.log.Debug("websocket upgrade", "err", err)
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

func connOf(s *melody.Session) *wsConn {
	c, _ := s.Get(keyConn)
	wc, _ := c.(*wsConn)
	return wc
}

// connect runs after the upgrade and before melody starts the session's
// writer: the connected frame and the replay are written here, directly and
// synchronously, while live events wait in the session queue behind them.
func (t *wsTransport) connect(s *melody.Session) {
	c := connOf(s)
	c.s = s
	c.client = newClient(&wsSink{s: s, timeout: t.writeTimeout}, int(t.queue), c.sub, t.hub.Viewer(c.user))
	t.conns.attach(c)
	// Control pings cost a pong each: they count against the message rate
	// like data messages. (Browsers never send them.)
	conn := s.WebsocketConnection()
	conn.SetPingHandler(func(data string) error {
		if !t.allow(c) {
			return nil
		}
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		var ne net.Error
		if errors.Is(err, websocket.ErrCloseSent) || (errors.As(err, &ne) && ne.Timeout()) {
			return nil // as gorilla's default handler: not worth ending the read loop
		}
		return err
	})
	out := wsEmitter{s: s, timeout: t.writeTimeout}
	err := out.write(controlFrame("connected", "", map[string]any{"user_id": c.user.ID, "connection_id": c.id}, time.Now()))
	if err == nil {
		ctx, cancel := context.WithCancel(s.Request.Context())
		defer cancel()
		err = t.hub.Attach(ctx, c.client, c.last, c.from, out)
	}
	if err != nil {
		code := websocket.CloseInternalServerErr
		if errors.Is(err, errClosing) {
			code = CloseGoingAway
		}
		c.client.sink.close(code, "could not attach: retry with your last id")
		t.log.Debug("websocket attach", "err", err)
	}
}

func (t *wsTransport) disconnect(s *melody.Session) {
	if c := connOf(s); c != nil {
		if c.client != nil {
			t.hub.Detach(c.client)
			t.metrics.disconnected(transportWS, c.client.sink.(*wsSink).why.get())
		}
		t.release(c)
	}
}

// sent runs on the session's writer after each text frame: the credit
// comes back, and a lagging client pulls its next events from the window.
func (t *wsTransport) sent(s *melody.Session, msg []byte) {
	t.metrics.sentWS(msg)
	if c := connOf(s); c != nil && c.client.sent() {
		t.hub.refill(c.client)
	}
}

func (t *wsTransport) error(s *melody.Session, err error) {
	if c := connOf(s); errors.Is(err, websocket.ErrReadLimit) && c != nil && c.client != nil {
		c.client.sink.(*wsSink).why.set(whyTooBig) // metrics: melody closes it with 1009
	}
	if errors.Is(err, melody.ErrMessageBufferFull) {
		// melody drops the message and goes on; we must not, or the client
		// would see a gap. Mark the sink so the hub disconnects it.
		if c := connOf(s); c != nil && c.client != nil {
			c.client.sink.(*wsSink).full.Store(true)
		}
	}
}

// control queues one of the transport's own frames behind the events
// already queued. It counts against the connection's credit like an event.
func (t *wsTransport) control(c *wsConn, frame []byte) {
	c.client.inflight.Add(1)
	_ = c.s.Write(frame)
	if c.client.sink.(*wsSink).full.Load() {
		t.hub.kickSlow(c.client)
	}
}

// wsSink queues frames in the melody session.
type wsSink struct {
	s       *melody.Session
	timeout time.Duration // the write timeout: how long close may wait for the writer
	full    atomic.Bool   // set (synchronously, by melody's error hook) when a Write was dropped
	why     closeTag      // metrics: why it ended
}

func (k *wsSink) send(e *entry) bool {
	if k.full.Load() {
		return false
	}
	_ = k.s.Write(e.frame) // a full buffer is reported through the error hook
	return !k.full.Load()
}

// close sends the close frame directly (WriteControl is safe beside the
// writer, and the queue may be full) and closes the socket; melody's read
// loop then ends and runs the disconnect hook. WriteControl first waits for
// the write lock, which melody's writer holds while a frame is stuck in a
// full socket (the usual state of a slow client). A slow client's close
// waits as long as that frame may take: giving up sooner would cut the
// frame short and the client would see an abnormal closure, not 4008. At
// shutdown a stalled client gets a second, so it cannot hold up the exit.
func (k *wsSink) close(code int, reason string) {
	k.why.code(code)
	wait := time.Second
	if code == CloseSlow {
		wait = k.timeout
	}
	conn := k.s.WebsocketConnection()
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(wait))
	_ = conn.Close()
}

// wsEmitter writes frames on the socket before melody's writer runs.
type wsEmitter struct {
	s       *melody.Session
	timeout time.Duration
}

func (w wsEmitter) write(b []byte) error {
	conn := w.s.WebsocketConnection()
	if err := conn.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return err
	}
	return conn.WriteMessage(websocket.TextMessage, b)
}

func (w wsEmitter) event(e *entry) error { return w.write(e.frame) }

func (w wsEmitter) reset(reason string, head notify.Position) error {
	return w.write(resetFrame(reason, head))
}

func resetFrame(reason string, head notify.Position) []byte {
	id := ""
	if !head.IsZero() {
		id = head.String()
	}
	return controlFrame("reset", id, map[string]string{"reason": reason}, time.Now())
}

func closeMessage(code int, reason string) []byte { return websocket.FormatCloseMessage(code, reason) }
