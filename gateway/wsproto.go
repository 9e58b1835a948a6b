package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
)

// message answers the app client's messages: {"type":"ping"} with pong and
// {"type":"check_online"} with online_status, and changes subscriptions
// (subscribe, unsubscribe: answered with subscribed, unsubscribed or
// subscription_error). Anything else, including invalid JSON, is ignored: a
// client bug must not cost the connection. Only
// flooding does (see allow).
func (t *wsTransport) message(s *melody.Session, msg []byte) {
	c := connOf(s)
	if c == nil || c.client == nil || !t.allow(c) {
		return
	}
	var m struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		t.log.Debug("ignoring client message", "err", err, "conn", c.id)
		return
	}
	now := time.Now()
	switch m.Type {
	case "ping":
		t.control(c, controlFrame("pong", "", map[string]any{"timestamp": now.UTC().Format(timeLayout)}, now))
	case "check_online":
		t.control(c, controlFrame("online_status", "", map[string]any{"online": true, "timestamp": now.UTC().Format(timeLayout)}, now))
	case "subscribe", "unsubscribe":
		var sm subscribeMsg
		if err := json.Unmarshal(msg, &sm); err != nil {
			t.resubscribe(c, "", "", func([]*Subscription) ([]*Subscription, error) {
				return nil, fmt.Errorf("%w: %s", errBadSubscription, clip(err.Error()))
			}, nil)
			return
		}
		if m.Type == "subscribe" {
			t.subscribe(c, &sm)
		} else {
			t.unsubscribe(c, &sm)
		}
	case "pong":
		// an answer to our ping: reading it already kept the link alive
	default:
		t.log.Debug("ignoring client message", "type", m.Type, "conn", c.id)
	}
}

// binary ignores a binary message, beyond counting it against the rate.
func (t *wsTransport) binary(s *melody.Session, _ []byte) {
	if c := connOf(s); c != nil && c.client != nil && t.allow(c) {
		t.log.Debug("ignoring binary client message", "conn", c.id)
	}
}

// allow takes one message from c's token bucket. A client over the rate is
// closed with 1008: answering a flood would cost every other client, and
// dropping messages silently would break a client that only sends too fast
// by mistake. It runs on the session's read loop, which stops once the
// socket is closed.
func (t *wsTransport) allow(c *wsConn) bool {
	if c.cut.Load() {
		return false
	}
	if c.rate.Allow() {
		return true
	}
	if c.cut.CompareAndSwap(false, true) {
		t.log.Info("closing websocket", "reason", "message rate exceeded", "conn", c.id, "addr", c.addr)
		t.hub.Detach(c.client)
		t.closeFromReader(c, ClosePolicy, ReasonRate)
	}
	return false
}

// closeGrace is how long a socket closed for breaking a limit waits for the
// client's close frame.
const closeGrace = 2 * time.Second

// closeFromReader sends c a close frame and ends its read loop when the
// client answers, or after closeGrace; the loop drops what it reads until
// then. Closing the socket at once, with the flood unread, would reset the
// connection and the client could lose the close frame. Call it on the
// session's read loop only.
func (t *wsTransport) closeFromReader(c *wsConn, code int, reason string) {
	if c.client != nil {
		c.client.sink.(*wsSink).why.code(code) // metrics: why it ended
	}
	conn := c.s.WebsocketConnection()
	conn.SetPongHandler(nil) // melody's would move the deadline on
	_ = conn.SetReadDeadline(time.Now().Add(closeGrace))
	_ = conn.WriteControl(websocket.CloseMessage, closeMessage(code, reason), time.Now().Add(t.writeTimeout))
}

// pinger sends every connection {"type":"ping"} each interval, as the app's
// server does: its client marks a link stale after 45 s without a message.
// The frame is built once per tick and shared.
func (t *wsTransport) pinger(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			frame := controlFrame("ping", "", map[string]any{"timestamp": now.UTC().Format(timeLayout)}, now)
			for _, c := range t.conns.all() {
				t.control(c, frame)
			}
		}
	}
}

// subscribe adds the subscription of m, or replaces the one with its id.
func (t *wsTransport) subscribe(c *wsConn, m *subscribeMsg) {
	sub, err := parseSubscribe(m)
	t.resubscribe(c, "subscribed", idOf(m), func(subs []*Subscription) ([]*Subscription, error) {
		if err != nil {
			return nil, err
		}
		if sub.ID == "" {
			c.nsub++
			sub.ID = fmt.Sprintf("s%d", c.nsub)
		}
		out := slices.DeleteFunc(slices.Clone(subs), func(s *Subscription) bool { return s.ID == sub.ID })
		if len(out) >= maxSubscriptions {
			return nil, fmt.Errorf("%w: at most %d subscriptions per connection", errBadSubscription, maxSubscriptions)
		}
		return append(out, sub), nil
	}, func() string { return sub.ID })
}

// unsubscribe removes the subscription with m's id. With none left, the
// connection receives no events until it subscribes again.
func (t *wsTransport) unsubscribe(c *wsConn, m *subscribeMsg) {
	t.resubscribe(c, "unsubscribed", idOf(m), func(subs []*Subscription) ([]*Subscription, error) {
		if m.ID == nil {
			return nil, fmt.Errorf("%w: unsubscribe needs the id", errBadSubscription)
		}
		i := slices.IndexFunc(subs, func(s *Subscription) bool { return s.ID == *m.ID })
		if i < 0 {
			return nil, fmt.Errorf("%w: no subscription %q", errBadSubscription, clip(*m.ID))
		}
		return slices.Delete(slices.Clone(subs), i, i+1), nil
	}, func() string { return *m.ID })
}

// resubscribe applies change in the hub and queues the answer: ok (with the
// subscription's id and the ids now active) or subscription_error.
func (t *wsTransport) resubscribe(c *wsConn, ok, asked string, change func([]*Subscription) ([]*Subscription, error), id func() string) {
	now := time.Now()
	t.hub.resubscribe(c.client, change, func(subs []*Subscription, err error) {
		var frame []byte
		if err != nil {
			frame = controlFrame("subscription_error", "", map[string]any{"id": asked, "error": err.Error()}, now)
		} else {
			ids := make([]string, len(subs))
			for i, s := range subs {
				ids[i] = s.ID
			}
			frame = controlFrame(ok, "", map[string]any{"id": id(), "subscriptions": ids}, now)
		}
		// Queued under the hub's lock (see Hub.resubscribe); a full queue is
		// dealt with after it.
		c.client.inflight.Add(1)
		_ = c.s.Write(frame)
	})
	if c.client.sink.(*wsSink).full.Load() {
		t.hub.kickSlow(c.client)
	}
}

// idOf is the id a message named, for error answers ("" when none).
func idOf(m *subscribeMsg) string {
	if m.ID == nil {
		return ""
	}
	return clip(*m.ID)
}
