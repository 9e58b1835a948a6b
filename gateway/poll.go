package gateway

import (
	"encoding/json"
	"errors"
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
type pollTransport struct {
	hub     *Hub
	auth    *Auth
	log     *slog.Logger
	done    <-chan struct{}
	metrics *metrics
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
	timeout := 5
	if s := q.Get("timeout"); s != "" {
		if timeout, err = strconv.Atoi(s); err != nil || timeout < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"detail": "timeout must be a whole number of seconds"})
			return
		}
	}
	timeout = min(timeout, 30)
	defer t.metrics.opened(transportPoll, nil)()

	deadline := time.NewTimer(time.Duration(timeout) * time.Second)
	defer deadline.Stop()
	for {
		evs, serverTime, changed, err := t.hub.since(since, pollLimit, want)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"detail": err.Error()})
			return
		}
		if len(evs) > 0 || timeout == 0 {
			out := make([]pollEvent, len(evs))
			for i, e := range evs {
				out[i] = pollEvent{ID: e.Pos.String(), Type: e.Type, Data: e.Data, Truncated: e.Truncated, Timestamp: unixSeconds(e.Time)}
			}
			writeJSON(w, http.StatusOK, map[string]any{"events": out, "server_time": serverTime})
			t.metrics.deliveredAll(transportPoll, evs)
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			writeJSON(w, http.StatusOK, map[string]any{"events": []pollEvent{}, "server_time": serverTime})
			return
		case <-r.Context().Done():
			return
		case <-t.done:
			writeJSON(w, http.StatusOK, map[string]any{"events": []pollEvent{}, "server_time": serverTime})
			return
		}
	}
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
