package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"
)

// pollTransport is the app's long-poll fallback:
//
//	GET /poll?since=<unix seconds>&timeout=<seconds>
//	-> {"events":[{"id","type","data","timestamp":<unix seconds>}],"server_time":<unix seconds>}
//
// It answers as soon as an event committed after since is in the replay
// window, else after timeout with no events. server_time is the commit time
// of the newest event answered (or of the head), never the clock: commit
// times increase with commit order, so "events after server_time" can never
// skip one that was committed but not yet read when the answer went out.
//
// A poll has no queue: its answer is built from the shared window when it
// is sent, at most pollLimit events (plus the rest of the last one's
// transaction), and written under the write timeout. A client that does not
// read it in time is cut, and polls again from the same since.
type pollTransport struct {
	hub          *Hub
	auth         *Auth
	log          *slog.Logger
	done         <-chan struct{}
	writeTimeout time.Duration
	polls        slots // in progress, at most GATEWAY_MAX_POLLERS
	addrs        *addrSlots
	clients      clientAddrs
	metrics      *metrics
}

// pollLimit caps one answer (at a transaction boundary: see Hub.since); the
// client pages on with server_time.
const pollLimit = 1000

type pollEvent struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
	Truncated bool            `json:"truncated,omitempty"`
	Timestamp float64         `json:"timestamp"`
}

func (t *pollTransport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, err := t.auth.Request(r)
	if err != nil {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Not authenticated"})
		return
	}
	q := r.URL.Query()
	sub, err := ParseQuery(q)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"detail": err.Error()})
		return
	}
	view := t.hub.Viewer(user)
	want := func(e *entry) bool { return view.visible(e) && sub.match(e) }
	since, err := parseSince(q.Get("since"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"detail": err.Error()})
		return
	}
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"detail": err.Error()})
		return
	}
	release, ok := admit(w, &t.polls, t.addrs, t.clients.of(r), "long-polls")
	if !ok {
		return
	}
	defer release()
	// The server has no WriteTimeout (streams live for hours): the answer
	// gets its own deadline, set when it is written.
	rc := http.NewResponseController(w)
	answer := func(evs []*entry, serverTime float64) {
		_ = rc.SetWriteDeadline(time.Now().Add(t.writeTimeout))
		if err := writePollAnswer(w, evs, serverTime); err != nil {
			t.log.Debug("poll answer", "err", err)
		}
	}
	defer t.metrics.opened(transportPoll, nil)()

	deadline := time.NewTimer(time.Duration(timeout) * time.Second)
	defer deadline.Stop()
	for {
		evs, serverTime, changed, err := t.hub.since(since, pollLimit, want)
		if err != nil {
			_ = rc.SetWriteDeadline(time.Now().Add(t.writeTimeout))
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"detail": err.Error()})
			return
		}
		if len(evs) > 0 || timeout == 0 {
			answer(evs, serverTime)
			t.metrics.deliveredAll(transportPoll, evs)
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			answer(nil, serverTime)
			return
		case <-r.Context().Done():
			return
		case <-t.done:
			answer(nil, serverTime)
			return
		}
	}
}

// writePollAnswer writes {"events":[...],"server_time":t} one event at a
// time. An answer can hold a thousand events and more: encoded whole, it
// would be a copy of all of them held for as long as a client takes to read
// it; this way a slow reader holds the server's write buffer and the
// window's own entries.
func writePollAnswer(w http.ResponseWriter, evs []*entry, serverTime float64) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	b := []byte(`{"events":[`)
	for i, e := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		ev, err := json.Marshal(pollEvent{ID: e.Pos.String(), Type: e.Type, Data: e.Data, Truncated: e.Truncated, Timestamp: unixSeconds(e.Time)})
		if err != nil {
			return fmt.Errorf("encode event %s: %w", e.Pos.String(), err)
		}
		if _, err := w.Write(append(b, ev...)); err != nil {
			return err
		}
		b = b[:0]
	}
	st, err := json.Marshal(serverTime)
	if err != nil {
		return fmt.Errorf("encode server_time: %w", err)
	}
	b = append(append(append(b, `],"server_time":`...), st...), "}\n"...)
	_, err = w.Write(b)
	return err
}

// parseSince reads unix seconds as a float; empty means 0 (everything kept).
func parseSince(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1e11 {
		return time.Time{}, errors.New("since must be unix seconds, such as 1767225600.123456")
	}
	// Commit times have microsecond precision; a float64 near today's unix
	// time resolves about 0.24 microseconds, so rounding recovers them.
	return time.UnixMicro(int64(math.Round(f * 1e6))).UTC(), nil
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }
