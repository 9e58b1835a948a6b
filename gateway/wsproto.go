package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/gorilla/websocket"
)

// message answers the app client's messages: {"type":"ping"} with pong and
// {"type":"check_online"} with online_status, and changes subscriptions
// (subscribe, unsubscribe: answered with subscribed, unsubscribed or
// subscription_error). Anything else, including invalid JSON, is ignored: a
// client bug must not cost the connection; only flooding does (see allow).
// The decisions are pure functions of the message (parseClientMessage,
// reply, apply, answer), fuzzed without a socket.
func (t *wsTransport) message(c *wsConn, msg []byte) {
	if !t.allow(c) {
		return
	}
	m := parseClientMessage(msg)
	now := time.Now()
	reply := m.reply(now)
	switch {
	case reply != nil:
		t.control(c, newFrame(reply))
	case m.changesSubscriptions():
		t.resubscribe(c, m, now)
	case m.typ == "pong":
		// an answer to our ping: reading it already kept the link alive
	default:
		t.log.Debug("ignoring client message", "type", clip(m.typ), "conn", c.id)
	}
}

// binary ignores a binary message, beyond counting it against the rate.
func (t *wsTransport) binary(c *wsConn, _ []byte) {
	if t.allow(c) {
		t.log.Debug("ignoring binary client message", "conn", c.id)
	}
}

// allow takes one message from c's token bucket. A client over the rate is
// closed with 1008: answering a flood would cost every other client, and
// dropping messages silently would break a client that only sends too fast
// by mistake. It runs on the connection's read loop, which stops once the
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
// connection's read loop only.
func (t *wsTransport) closeFromReader(c *wsConn, code int, reason string) {
	c.why.code(code) // metrics: why it ended
	conn := c.ws
	c.readClosing.Store(true) // a pong must not move the deadline on, and the reader must not park
	_ = conn.SetReadDeadline(time.Now().Add(closeGrace))
	_ = conn.WriteControl(websocket.CloseMessage, closeMessage(code, reason), time.Now().Add(t.writeTimeout))
}

// clientMsg is what one client message asks for.
type clientMsg struct {
	typ string        // its "type"; "" when it is not a JSON object with a string type
	id  *string       // subscribe, unsubscribe: the subscription id it names, if any
	sub *Subscription // subscribe: the subscription, when it is valid
	err error         // subscribe, unsubscribe: why it is refused
}

// parseClientMessage decodes a client's message. It never fails: what it
// does not understand has a type no one acts on.
func parseClientMessage(msg []byte) clientMsg {
	var head struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(msg, &head) != nil {
		return clientMsg{}
	}
	m := clientMsg{typ: head.Type}
	if !m.changesSubscriptions() {
		return m
	}
	var sm subscribeMsg
	if err := json.Unmarshal(msg, &sm); err != nil {
		m.err = fmt.Errorf("%w: %s", errBadSubscription, clip(err.Error()))
		return m
	}
	m.id = sm.ID
	switch {
	case m.typ == "subscribe":
		m.sub, m.err = parseSubscribe(&sm)
	case sm.ID == nil:
		m.err = fmt.Errorf("%w: unsubscribe needs the id", errBadSubscription)
	}
	return m
}

func (m clientMsg) changesSubscriptions() bool { return m.typ == "subscribe" || m.typ == "unsubscribe" }

// reply is the frame that answers a ping or check_online, else nil.
func (m clientMsg) reply(now time.Time) []byte {
	switch m.typ {
	case "ping":
		return controlFrame("pong", "", map[string]any{"timestamp": now.UTC().Format(timeLayout)}, now)
	case "check_online":
		return controlFrame("online_status", "", map[string]any{"online": true, "timestamp": now.UTC().Format(timeLayout)}, now)
	}
	return nil
}

// apply returns the subscriptions after m, and the id of the one it added,
// replaced or removed. nsub numbers the subscriptions named by the gateway
// ("s1", ...); it only moves when a subscription without an id is added.
// subs is not modified.
func (m clientMsg) apply(subs []*Subscription, nsub *int) ([]*Subscription, string, error) {
	if m.err != nil {
		return nil, "", m.err
	}
	if m.typ == "unsubscribe" {
		i := slices.IndexFunc(subs, func(s *Subscription) bool { return s.ID == *m.id })
		if i < 0 {
			return nil, "", fmt.Errorf("%w: no subscription %q", errBadSubscription, clip(*m.id))
		}
		return slices.Delete(slices.Clone(subs), i, i+1), *m.id, nil
	}
	sub := *m.sub // the message may be applied again; its own copy keeps its id
	if sub.ID == "" {
		*nsub++
		sub.ID = fmt.Sprintf("s%d", *nsub)
	}
	out := slices.DeleteFunc(slices.Clone(subs), func(s *Subscription) bool { return s.ID == sub.ID })
	if len(out) >= maxSubscriptions {
		return nil, "", fmt.Errorf("%w: at most %d subscriptions per connection", errBadSubscription, maxSubscriptions)
	}
	return append(out, &sub), sub.ID, nil
}

// answer is the frame that tells the client what apply did: subscribed or
// unsubscribed, with the id and the ids now active, or subscription_error
// with the id the message named ("" when none).
func (m clientMsg) answer(subs []*Subscription, id string, err error, now time.Time) []byte {
	if err != nil {
		asked := ""
		if m.id != nil {
			asked = clip(*m.id)
		}
		return controlFrame("subscription_error", "", map[string]any{"id": asked, "error": err.Error()}, now)
	}
	ids := make([]string, len(subs))
	for i, s := range subs {
		ids[i] = s.ID
	}
	return controlFrame(m.typ+"d", "", map[string]any{"id": id, "subscriptions": ids}, now)
}

// pinger sends every connection {"type":"ping"} each interval, as the app's
// server does: its client marks a link stale after 45 s without a message.
//
// The round is spread over the interval: the registry deals connections
// into pingSlots groups as they attach, and each tick pings its share of
// the groups, so each connection is pinged once an interval, at its own
// moment, a new one within an interval of attaching. All at once, one
// round to 10,000 sockets is 10,000 sends, 50 ms or more of a core, which
// the events committed meanwhile wait behind (at 100,000 sockets, half a
// second). The frame is built once per tick and shared.
func (t *wsTransport) pinger(ctx context.Context, every time.Duration) {
	n := pingSlices(every)
	tick := time.NewTicker(every / time.Duration(n))
	defer tick.Stop()
	for slice := 0; ; slice = (slice + 1) % n {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			part := t.conns.slotted(slice*pingSlots/n, (slice+1)*pingSlots/n)
			if len(part) == 0 {
				continue
			}
			frame := newFrame(controlFrame("ping", "", map[string]any{"timestamp": now.UTC().Format(timeLayout)}, now))
			for _, c := range part {
				t.control(c, frame)
			}
		}
	}
}

// pingSlices is how many ticks a ping round is spread over: pingSlots, or
// fewer for short intervals, so that ticks stay at least 10 ms apart.
func pingSlices(every time.Duration) int {
	return int(max(1, min(pingSlots, every/(10*time.Millisecond))))
}

// resubscribe applies m in the hub and queues the answer.
func (t *wsTransport) resubscribe(c *wsConn, m clientMsg, now time.Time) {
	var id string
	queued := true
	t.hub.resubscribe(c.client, func(subs []*Subscription) ([]*Subscription, error) {
		out, sid, err := m.apply(subs, &c.nsub)
		id = sid
		return out, err
	}, func(subs []*Subscription, err error) {
		// Queued under the hub's lock (see Hub.resubscribe); a full queue is
		// dealt with after it.
		c.client.inflight.Add(1)
		queued = c.send(newFrame(m.answer(subs, id, err, now)))
	})
	if !queued {
		t.hub.kickSlow(c.client)
	}
}
