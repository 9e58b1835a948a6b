package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"

	"github.com/budget-rt/gateway/notify"
)

// Session keys the WebSocket transport keeps on each melody session.
const (
	keyClient = "rtgw.client"
	keyLast   = "rtgw.last"
	keyFrom   = "rtgw.from"
)

// wsTransport serves the WebSocket endpoint with melody.
type wsTransport struct {
	hub          *Hub
	log          *slog.Logger
	m            *melody.Melody
	writeTimeout time.Duration
	queue        int32
}

// controlMargin is room in a session's queue beyond the events' credit.
const controlMargin = 8

func newWS(hub *Hub, logger *slog.Logger, opt Options) *wsTransport {
	t := &wsTransport{hub: hub, log: logger, m: melody.New(), writeTimeout: opt.WriteTimeout}
	// The hub never queues more than SendQueue events (see client); the
	// margin is for the transport's own frames.
	t.m.Config.MessageBufferSize = opt.SendQueue + controlMargin
	t.queue = int32(opt.SendQueue)
	t.m.Config.WriteWait = opt.WriteTimeout
	t.m.HandleConnect(t.connect)
	t.m.HandleDisconnect(t.disconnect)
	t.m.HandleError(t.error)
	t.m.HandleSentMessage(t.sent)
	t.m.HandleMessage(func(*melody.Session, []byte) {}) // client messages carry nothing yet
	return t
}

func (t *wsTransport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The start position is taken before the upgrade: every event committed
	// after the handshake completes is after it, so none can slip past while
	// the connection is being set up.
	from, err := t.hub.Head()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	keys := map[string]any{keyLast: r.URL.Query().Get("last_event_id"), keyFrom: from}
	if err := t.m.HandleRequestWithKeys(w, r, keys); err != nil {
		t.log.Debug("websocket upgrade", "err", err)
	}
}

// connect runs after the upgrade and before melody starts the session's
// writer: the replay is written here, directly and synchronously, while live
// events wait in the session queue behind it.
func (t *wsTransport) connect(s *melody.Session) {
	c := &client{sink: &wsSink{s: s, timeout: t.writeTimeout}, limit: t.queue}
	s.Set(keyClient, c)
	last, _ := s.Get(keyLast)
	from, _ := s.Get(keyFrom)
	ctx, cancel := context.WithCancel(s.Request.Context())
	defer cancel()
	err := t.hub.Attach(ctx, c, last.(string), from.(notify.Position), wsEmitter{s: s, timeout: t.writeTimeout})
	if err != nil {
		code := websocket.CloseInternalServerErr
		if errors.Is(err, errClosing) {
			code = CloseGoingAway
		}
		c.sink.close(code, "could not attach: retry with your last id")
		t.log.Debug("websocket attach", "err", err)
	}
}

func (t *wsTransport) disconnect(s *melody.Session) {
	if c, ok := s.Get(keyClient); ok {
		t.hub.Detach(c.(*client))
	}
}

// sent runs on the session's writer after each text frame: the credit
// comes back, and a lagging client pulls its next events from the window.
func (t *wsTransport) sent(s *melody.Session, _ []byte) {
	if c, ok := s.Get(keyClient); ok && c.(*client).sent() {
		t.hub.refill(c.(*client))
	}
}

func (t *wsTransport) error(s *melody.Session, err error) {
	if errors.Is(err, melody.ErrMessageBufferFull) {
		// melody drops the message and goes on; we must not, or the client
		// would see a gap. Mark the sink so the hub disconnects it.
		if c, ok := s.Get(keyClient); ok {
			c.(*client).sink.(*wsSink).full.Store(true)
		}
	}
}

// wsSink queues frames in the melody session.
type wsSink struct {
	s       *melody.Session
	timeout time.Duration // the write timeout: how long close may wait for the writer
	full    atomic.Bool   // set (synchronously, by melody's error hook) when a Write was dropped
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
	wait := time.Second
	if code == CloseSlow {
		wait = k.timeout
	}
	conn := k.s.WebsocketConnection()
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(wait))
	_ = conn.Close()
}

// wsEmitter writes replay frames on the socket before melody's writer runs.
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
