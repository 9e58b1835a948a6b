package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/budget-rt/gateway/notify"
)

// The operations page: one HTML file with its script inline (no build step,
// no CDN), the numbers it polls from /ops/stats, and the events it follows
// on /ops/events.

//go:embed ops.html
var opsHTML []byte

// opsCookie carries the ops token after the page was opened with ?token=,
// so the token leaves the address bar and the page's requests carry it.
const opsCookie = "rtgw_ops"

// MetricsHandler serves the Prometheus metrics (the caller mounts it when
// Options.MetricsRoute is false and it wants them elsewhere).
func (s *Server) MetricsHandler() http.Handler { return s.metrics.handler(s.log) }

func (s *Server) opsRoutes(mux *http.ServeMux) {
	if s.opt.MetricsRoute {
		mux.Handle("GET /metrics", s.MetricsHandler())
	}
	mux.HandleFunc("GET /ops", s.opsGuard(s.opsPage))
	mux.HandleFunc("GET /ops/stats", s.opsGuard(s.opsStats))
	mux.HandleFunc("GET /ops/events", s.opsGuard(s.opsEvents))
}

// opsGuard lets a request through when it carries the ops token (as a
// Bearer token or the cookie); without GATEWAY_OPS_TOKEN, the app's access
// token (cookie or Bearer, any user); without authentication at all, anyone.
func (s *Server) opsGuard(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.opt.OpsToken == "" {
			if s.opt.Auth.Open() {
				next(w, r)
				return
			}
			if _, err := s.opt.Auth.Request(r); err != nil {
				s.opsRefuse(w, r, "the app's access token (access_token cookie or Bearer) is required")
				return
			}
			next(w, r)
			return
		}
		if tok := r.URL.Query().Get("token"); tok != "" && r.URL.Path == "/ops" {
			if !s.opsTokenOK(tok) {
				s.opsRefuse(w, r, "wrong ops token")
				return
			}
			http.SetCookie(w, &http.Cookie{Name: opsCookie, Value: tok, Path: "/ops", HttpOnly: true,
				SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"})
			http.Redirect(w, r, "/ops", http.StatusSeeOther)
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			if c, err := r.Cookie(opsCookie); err == nil {
				tok = c.Value
			}
		}
		if !s.opsTokenOK(tok) {
			s.opsRefuse(w, r, "the ops token is required: open /ops?token=<GATEWAY_OPS_TOKEN> or send it as a Bearer token")
			return
		}
		next(w, r)
	}
}

// opsTokenOK compares in constant time (hashes, so lengths leak nothing).
func (s *Server) opsTokenOK(tok string) bool {
	a, b := sha256.Sum256([]byte(tok)), sha256.Sum256([]byte(s.opt.OpsToken))
	return tok != "" && subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func (s *Server) opsRefuse(w http.ResponseWriter, r *http.Request, why string) {
	s.log.Info("ops refused", "path", r.URL.Path, "remote", r.RemoteAddr)
	w.Header().Set("WWW-Authenticate", "Bearer")
	writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": why})
}

func (s *Server) opsPage(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Everything is in the file: nothing may load from elsewhere.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(opsHTML)
}

// opsHistory is how many seconds of rates the page's chart shows.
const opsHistory = 300

// opsLagWindow is how many seconds the page's lag quantiles cover.
const opsLagWindow = 60

// opsState is what the sampler keeps for the page: per-second rates over
// the last opsHistory seconds and lag bucket counts over opsLagWindow.
type opsState struct {
	mu        sync.Mutex
	n         int // samples taken, up to opsHistory
	pos       int // next slot
	received  [opsHistory]float64
	delivered [opsHistory]float64
	lastRecv  uint64
	lastDeliv uint64
	lastAt    time.Time
	lags      [opsLagWindow + 1][]uint64 // cumulative bucket counts, one per second
	lagPos    int
	lagN      int
}

func newOpsState() *opsState { return &opsState{} }

// sampleOps records the rates every second until ctx ends. It reads the
// same atomics the metrics do; the hot paths do nothing for it.
func (s *Server) sampleOps(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	s.ops.sample(s.metrics, time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			s.ops.sample(s.metrics, now)
		}
	}
}

func (o *opsState) sample(m *metrics, now time.Time) {
	recv := m.received.Load()
	var deliv uint64
	for i := range m.delivered {
		deliv += m.delivered[i].Load()
	}
	buckets := m.lagBuckets()
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.lastAt.IsZero() {
		secs := now.Sub(o.lastAt).Seconds()
		o.received[o.pos] = float64(recv-o.lastRecv) / secs
		o.delivered[o.pos] = float64(deliv-o.lastDeliv) / secs
		o.pos = (o.pos + 1) % opsHistory
		o.n = min(o.n+1, opsHistory)
	}
	o.lastRecv, o.lastDeliv, o.lastAt = recv, deliv, now
	o.lags[o.lagPos] = buckets
	o.lagPos = (o.lagPos + 1) % len(o.lags)
	o.lagN = min(o.lagN+1, len(o.lags))
}

// lagBuckets sums the lag histograms of every transport: cumulative counts
// per bucket of lagBuckets, then the total.
func (m *metrics) lagBuckets() []uint64 {
	out := make([]uint64, len(lagBuckets)+1)
	var pb dto.Metric
	for _, h := range m.lag {
		if h.(prometheus.Metric).Write(&pb) != nil {
			continue
		}
		for i, b := range pb.GetHistogram().GetBucket() {
			out[i] += b.GetCumulativeCount()
		}
		out[len(lagBuckets)] += pb.GetHistogram().GetSampleCount()
	}
	return out
}

// series returns the rates, oldest first.
func (o *opsState) series() (recv, deliv []float64) {
	recv, deliv = make([]float64, 0, o.n), make([]float64, 0, o.n)
	for i := o.n; i > 0; i-- {
		j := (o.pos - i + opsHistory) % opsHistory
		recv = append(recv, o.received[j])
		deliv = append(deliv, o.delivered[j])
	}
	return recv, deliv
}

// lagQuantiles estimates quantiles (in ms) of the lags observed during the
// last opsLagWindow seconds, interpolating within buckets as Prometheus's
// histogram_quantile does. Zero count: nil.
func (o *opsState) lagQuantiles(qs ...float64) (count uint64, out []float64) {
	if o.lagN < 2 {
		return 0, nil
	}
	newest := o.lags[(o.lagPos-1+len(o.lags))%len(o.lags)]
	oldest := o.lags[0] // the first sample, until the ring is full
	if o.lagN == len(o.lags) {
		oldest = o.lags[o.lagPos] // the slot overwritten next: opsLagWindow seconds ago
	}
	n := len(lagBuckets)
	count = newest[n] - oldest[n]
	if count == 0 {
		return 0, nil
	}
	for _, q := range qs {
		rank := q * float64(count)
		v := lagBuckets[n-1]
		lower, prev := 0.0, uint64(0)
		for i := range n {
			c := newest[i] - oldest[i]
			if float64(c) >= rank {
				inBucket := c - prev
				frac := 1.0
				if inBucket > 0 {
					frac = (rank - float64(prev)) / float64(inBucket)
				}
				v = lower + (lagBuckets[i]-lower)*frac
				break
			}
			lower, prev = lagBuckets[i], c
		}
		out = append(out, math.Round(v*1e6)/1e3)
	}
	return count, out
}

// opsStatsJSON is the answer of /ops/stats.
type opsStatsJSON struct {
	Time        string            `json:"time"`
	Auth        string            `json:"auth"` // how /ops is protected: token, jwt, none
	Head        string            `json:"head"`
	Window      int               `json:"window_events"`
	Listen      opsListen         `json:"listen"`
	Connections map[string]int64  `json:"connections"`
	Received    uint64            `json:"received_total"`
	Delivered   map[string]uint64 `json:"delivered_total"`
	Rate        opsRate           `json:"rate"`
	Lag         opsLag            `json:"lag"`
	Disconnects map[string]uint64 `json:"disconnects"`
	Replays     map[string]uint64 `json:"replays"`
	Resets      map[string]uint64 `json:"resets"`
	DB          opsDB             `json:"db"`
}

type opsListen struct {
	Up         bool   `json:"up"`
	CaughtUp   bool   `json:"caught_up"`
	Error      string `json:"error,omitempty"`
	CursorSeq  int64  `json:"cursor_seq"` // commit sequence of the last transaction read
	Reconnects uint64 `json:"reconnects"`
}

type opsRate struct {
	Step      int       `json:"step_seconds"`
	Received  []float64 `json:"received"`
	Delivered []float64 `json:"delivered"`
}

type opsLag struct {
	Window int     `json:"window_seconds"`
	Count  uint64  `json:"count"`
	P50    float64 `json:"p50_ms"`
	P90    float64 `json:"p90_ms"`
	P99    float64 `json:"p99_ms"`
}

type opsDB struct {
	Pending    *int64   `json:"pending"`
	QueueUsage *float64 `json:"queue_usage"`
	Error      string   `json:"error,omitempty"`
}

func (s *Server) opsStats(w http.ResponseWriter, r *http.Request) {
	m := s.metrics
	st := opsStatsJSON{Time: time.Now().UTC().Format(time.RFC3339Nano), Window: s.hub.windowLen(),
		Connections: map[string]int64{}, Delivered: map[string]uint64{}, Received: m.received.Load(),
		Disconnects: map[string]uint64{}, Replays: map[string]uint64{}, Resets: map[string]uint64{}}
	switch {
	case s.opt.OpsToken != "":
		st.Auth = "token"
	case !s.opt.Auth.Open():
		st.Auth = "jwt"
	default:
		st.Auth = "none"
	}
	if head, err := s.hub.Head(); err == nil {
		st.Head = head.String()
	}
	for i, name := range transportNames {
		st.Connections[name] = m.connections(s, transport(i))
		st.Delivered[name] = m.delivered[i].Load()
	}
	s.ops.mu.Lock()
	st.Rate = opsRate{Step: 1}
	st.Rate.Received, st.Rate.Delivered = s.ops.series()
	count, qs := s.ops.lagQuantiles(.5, .9, .99)
	s.ops.mu.Unlock()
	st.Lag = opsLag{Window: opsLagWindow, Count: count, P50: -1, P90: -1, P99: -1}
	if qs != nil {
		st.Lag.P50, st.Lag.P90, st.Lag.P99 = qs[0], qs[1], qs[2]
	}
	counterValues(m.disconnects, st.Disconnects, "reason")
	counterValues(m.replays, st.Replays, "source")
	counterValues(m.resets, st.Resets, "reason")
	if f := m.src.Follower; f != nil {
		fs := f()
		st.Listen = opsListen{Up: fs.Listening, CaughtUp: fs.CaughtUp, CursorSeq: fs.Cursor.Seq, Reconnects: max(fs.Listens, 1) - 1}
		if fs.Err != nil {
			st.Listen.Error = fs.Err.Error()
		}
		if m.src.Backlog != nil {
			if b, err := m.backlog(r.Context()); err != nil {
				st.DB.Error = err.Error()
			} else {
				st.DB.Pending, st.DB.QueueUsage = &b.Pending, &b.QueueUsage
			}
		}
	}
	writeJSON(w, http.StatusOK, st)
}

// counterValues sums a counter vector's values by one label into out.
func counterValues(v *prometheus.CounterVec, out map[string]uint64, label string) {
	ch := make(chan prometheus.Metric, 64)
	go func() { v.Collect(ch); close(ch) }()
	var pb dto.Metric
	for m := range ch {
		if m.Write(&pb) != nil {
			continue
		}
		for _, l := range pb.GetLabel() {
			if l.GetName() == label {
				out[l.GetValue()] += uint64(pb.GetCounter().GetValue())
			}
		}
	}
}

// opsEvents streams every event as SSE, without its row: id, type, table,
// operation, commit time and the lag at writing. The ops token lets an
// operator watch the flow, never read the rows.
func (s *Server) opsEvents(w http.ResponseWriter, r *http.Request) {
	from, err := s.hub.Head()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	out := &opsWriter{w: w, rc: rc, timeout: s.opt.WriteTimeout}
	if out.raw([]byte("retry: 2000\n\n")) != nil || rc.Flush() != nil {
		return
	}
	const queue = 64
	sk := &opsSink{q: make(chan *entry, queue), gone: make(chan struct{})}
	c := newClient(sk, queue, &Subscription{ID: DefaultSubscription}, nil)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if err := s.hub.Attach(ctx, c, "", from, out); err != nil {
		return
	}
	defer s.hub.Detach(c)
	beat := time.NewTicker(15 * time.Second)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-sk.gone:
			return
		case <-beat.C:
			if out.raw([]byte(": heartbeat\n\n")) != nil || rc.Flush() != nil {
				return
			}
		case e := <-sk.q:
			err := out.event(e)
			refill := c.sent()
			if err != nil || rc.Flush() != nil {
				return
			}
			if refill {
				s.hub.refill(c)
			}
		}
	}
}

type opsSink struct {
	q    chan *entry
	gone chan struct{}
	once sync.Once
}

func (k *opsSink) send(e *entry) bool {
	select {
	case k.q <- e:
		return true
	default:
		return false
	}
}

func (k *opsSink) close(int, string) { k.once.Do(func() { close(k.gone) }) }

type opsWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (o *opsWriter) raw(b []byte) error {
	_ = o.rc.SetWriteDeadline(time.Now().Add(o.timeout))
	_, err := o.w.Write(b)
	return err
}

func (o *opsWriter) event(e *entry) error {
	b, _ := json.Marshal(map[string]any{
		"id": e.Pos.String(), "type": e.Type, "table": e.Table, "op": string(rune(e.Op)),
		"time": e.Time.UTC().Format(timeLayout), "lag_ms": math.Round(time.Since(e.Time).Seconds()*1e6) / 1e3,
	})
	return o.raw(sseBlock(e.Pos.String(), "event", b))
}

func (o *opsWriter) reset(reason string, head notify.Position) error {
	return o.raw(sseBlock(head.String(), "reset", resetFrame(reason, head)))
}
