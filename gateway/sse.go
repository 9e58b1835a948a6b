package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// sseTransport serves the operators' event stream as Server-Sent Events.
type sseTransport struct {
	hub          *Hub
	auth         *Auth
	log          *slog.Logger
	queue        int
	heartbeat    time.Duration
	writeTimeout time.Duration
	done         <-chan struct{} // closed at shutdown so streams end and Shutdown can finish
	streams      slots           // open streams, at most GATEWAY_MAX_SSE_CLIENTS
	addrs        *addrSlots
	clients      clientAddrs
	maxTypes     int // names in ?types=
	maxTypesLen  int // bytes of ?types=
	metrics      *metrics
}

func (t *sseTransport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Operators authenticate like the app's pages (cookie or Bearer), or
	// with a WebSocket token in ?token= where neither can be sent.
	user, err := t.auth.Request(r)
	if err != nil {
		tok := r.URL.Query().Get("token")
		if tok == "" {
			unauthorized(w)
			return
		}
		if user, err = t.auth.WSToken(r.Context(), tok); err != nil {
			unauthorized(w)
			return
		}
	}
	sub, err := ParseQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// The configurable caps on ?types= (ParseQuery has fixed ones of its own).
	_, err = t.parseTypes(r.URL.Query().Get("types"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"detail": err.Error()})
		return
	}
	release, ok := admit(w, &t.streams, t.addrs, t.clients.of(r), "event streams")
	if !ok {
		return
	}
	defer release()
	from, err := t.hub.Head()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	last := resumeID(r.Header, r.URL.Query())
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	out := sseWriter{w: w, rc: rc, timeout: t.writeTimeout}
	// retry: how long EventSource waits before reconnecting (it resends the
	// last id by itself).
	if err := out.write([]byte("retry: 1000\n\n")); err != nil || out.flush() != nil {
		return
	}

	sk := &sseSink{q: make(chan *entry, t.queue), gone: make(chan struct{})}
	c := newClient(sk, t.queue, sub, t.hub.Viewer(user))
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if err := t.hub.Attach(ctx, c, last, from, out); err != nil {
		t.log.Debug("sse attach", "err", err)
		return
	}
	defer t.hub.Detach(c)
	defer t.metrics.opened(transportSSE, &sk.metricsTag)()
	if out.flush() != nil {
		return
	}

	beat := time.NewTimer(t.heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.done:
			out.closing(CloseGoingAway, ReasonShutdown)
			return
		case <-sk.gone:
			out.closing(sk.why())
			return
		case <-beat.C:
			if out.write([]byte(": heartbeat\n\n")) != nil || out.flush() != nil {
				return
			}
		case e := <-sk.q:
			// Write what is queued, then flush once.
			refill := false
			for more := true; more; {
				if out.write(e.sse) != nil {
					return
				}
				t.metrics.delivered1(transportSSE, e.Time)
				refill = c.sent() || refill
				select {
				case e = <-sk.q:
				default:
					more = false
				}
			}
			if out.flush() != nil {
				return
			}
			if refill {
				t.hub.refill(c)
			}
		}
		beat.Reset(t.heartbeat)
	}
}

// parseTypes reads ?types=, a comma-separated list of event types; nil
// means every type.
func (t *sseTransport) parseTypes(s string) (map[string]bool, error) {
	if s == "" {
		return nil, nil
	}
	if t.maxTypesLen > 0 && len(s) > t.maxTypesLen {
		return nil, fmt.Errorf("types is %d bytes long, at most %d are allowed", len(s), t.maxTypesLen)
	}
	types := map[string]bool{}
	for typ := range strings.SplitSeq(s, ",") {
		if typ = strings.TrimSpace(typ); typ != "" {
			types[typ] = true
		}
	}
	if t.maxTypes > 0 && len(types) > t.maxTypes {
		return nil, fmt.Errorf("types lists %d event types, at most %d are allowed", len(types), t.maxTypes)
	}
	return types, nil
}

// sseSink queues entries for one stream.
type sseSink struct {
	q    chan *entry
	gone chan struct{}
	once sync.Once

	mu         sync.Mutex
	code       int // why the hub closed it, for the final comment
	reason     string
	metricsTag closeTag // metrics: why it ended
}

func (k *sseSink) send(e *entry) bool {
	select {
	case k.q <- e:
		return true
	default:
		return false
	}
}

// close ends the stream. SSE has no close code: the stream ends with a
// comment that gives the WebSocket code and reason, for people and
// scripts; EventSource ignores it, reconnects and sends Last-Event-ID.
func (k *sseSink) close(code int, reason string) {
	k.once.Do(func() {
		k.mu.Lock()
		k.code, k.reason = code, reason
		k.metricsTag.code(code)
		k.mu.Unlock()
		close(k.gone)
	})
}

func (k *sseSink) why() (int, string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.code, k.reason
}

// sseWriter writes with a deadline per write: the server's WriteTimeout is
// off for these long-lived responses.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (o sseWriter) write(b []byte) error {
	_ = o.rc.SetWriteDeadline(time.Now().Add(o.timeout))
	_, err := o.w.Write(b)
	return err
}

func (o sseWriter) flush() error { return o.rc.Flush() }

// closing writes the stream's last words, ": close <code> <reason>". A
// client too slow to take them is cut by the write deadline anyway.
func (o sseWriter) closing(code int, reason string) {
	if o.write([]byte(": close "+strconv.Itoa(code)+" "+reason+"\n\n")) == nil {
		_ = o.flush()
	}
}

func (o sseWriter) event(e *entry) error { return o.write(e.sse) }

func (o sseWriter) reset(reason string, head notify.Position) error {
	id := ""
	if !head.IsZero() {
		id = head.String()
	}
	return o.write(sseBlock(id, "reset", resetFrame(reason, head)))
}
