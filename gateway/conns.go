package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// registry holds this replica's WebSocket connections, for the limits,
// /ws/status, /ws/disconnect and the pinger.
type registry struct {
	maxPerUser, maxTotal int

	mu       sync.Mutex
	reserved int                // admitted, attached or not
	perUser  map[int64]int      // admitted per user
	byID     map[string]*wsConn // attached
	// slots deals the attached connections, in turn, into the pinger's
	// groups: each group is pinged at its own moment of the interval.
	slots    [pingSlots]map[*wsConn]struct{}
	nextSlot uint8
}

// pingSlots is how many groups the app-level ping round is dealt into
// (see wsTransport.pinger).
const pingSlots = 100

func newRegistry(maxPerUser, maxTotal int) *registry {
	return &registry{maxPerUser: maxPerUser, maxTotal: maxTotal, perUser: map[int64]int{}, byID: map[string]*wsConn{}}
}

var (
	errTooMany        = errors.New("too many connections")
	errTooManyForUser = errors.New("too many connections for this user")
)

// reserve admits c under the limits, before the upgrade.
func (r *registry) reserve(c *wsConn) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.maxTotal > 0 && r.reserved >= r.maxTotal:
		return fmt.Errorf("%w (limit %d)", errTooMany, r.maxTotal)
	case r.maxPerUser > 0 && r.perUser[c.user.ID] >= r.maxPerUser:
		return fmt.Errorf("%w (limit %d)", errTooManyForUser, r.maxPerUser)
	}
	r.reserved++
	r.perUser[c.user.ID]++
	return nil
}

func (r *registry) attach(c *wsConn) {
	r.mu.Lock()
	r.byID[c.id] = c
	c.pingSlot = r.nextSlot
	r.nextSlot = (r.nextSlot + 1) % pingSlots
	if r.slots[c.pingSlot] == nil {
		r.slots[c.pingSlot] = map[*wsConn]struct{}{}
	}
	r.slots[c.pingSlot][c] = struct{}{}
	r.mu.Unlock()
}

// slotted returns the attached connections of slots [lo, hi).
func (r *registry) slotted(lo, hi int) []*wsConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.slots[lo:hi] {
		n += len(s)
	}
	out := make([]*wsConn, 0, n)
	for _, s := range r.slots[lo:hi] {
		for c := range s {
			out = append(out, c)
		}
	}
	return out
}

func (r *registry) release(c *wsConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.byID[c.id]; ok {
		delete(r.byID, c.id)
		delete(r.slots[c.pingSlot], c)
	}
	r.reserved--
	if r.perUser[c.user.ID]--; r.perUser[c.user.ID] <= 0 {
		delete(r.perUser, c.user.ID)
	}
}

func (r *registry) all() []*wsConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*wsConn, 0, len(r.byID))
	for _, c := range r.byID {
		out = append(out, c)
	}
	return out
}

func (r *registry) counts(user int64) (total, mine int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reserved, r.perUser[user]
}

func (r *registry) get(id string) *wsConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

// status answers GET /ws/status for the authenticated user. The counts are
// this replica's.
func (t *wsTransport) status(w http.ResponseWriter, r *http.Request) {
	u, err := t.auth.Request(r)
	if err != nil {
		unauthorized(w)
		return
	}
	total, mine := t.conns.counts(u.ID)
	writeJSON(w, http.StatusOK, map[string]any{
		"total_connections": total,
		"user_connections":  mine,
		"limits":            map[string]int{"max_per_user": t.conns.maxPerUser, "max_total": t.conns.maxTotal},
	})
}

// disconnectConn answers POST /ws/disconnect {"connection_id": ...}: it
// closes that socket with 1000 when it is the user's own, on this replica.
func (t *wsTransport) disconnectConn(w http.ResponseWriter, r *http.Request) {
	u, err := t.auth.Request(r)
	if err != nil {
		unauthorized(w)
		return
	}
	var body struct {
		ConnectionID string `json:"connection_id"`
	}
	if t.bodyTimeout > 0 {
		// The server has no ReadTimeout (it would end streams): a body sent
		// a byte at a time gets this one.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(t.bodyTimeout))
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&body); err != nil || body.ConnectionID == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"detail": `body must be {"connection_id": "<uuid>"}`})
		return
	}
	c := t.conns.get(body.ConnectionID)
	if c == nil || c.user.ID != u.ID {
		writeJSON(w, http.StatusOK, map[string]string{"status": "not_found"})
		return
	}
	t.hub.Detach(c.client)
	c.client.sink.close(websocket.CloseNormalClosure, "disconnected")
	writeJSON(w, http.StatusOK, map[string]string{"status": "disconnected"})
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", "Bearer")
	writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Not authenticated"})
}
