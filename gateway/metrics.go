package gateway

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/budget-rt/gateway/notify"
)

// Sources are what the metrics and the ops page read from outside the
// gateway package, at scrape time. Any of them may be nil.
type Sources struct {
	// Follower reports the LISTEN side's health (notify.Follower.Status).
	Follower func() notify.Status
	// Backlog counts the events committed after a position and reads the
	// NOTIFY queue's usage (notify.Store.Backlog).
	Backlog func(ctx context.Context, after notify.Position) (notify.Backlog, error)
	// BadInput returns the bad notifications and bad log rows skipped so
	// far, by kind (notify.Follower.Stats, where the follower has it).
	BadInput func() (notifications, rows map[string]uint64)
	// Capture reports capture by logical decoding (notify.Capture.Stats).
	Capture func() notify.CaptureStats
}

// transport names a client transport in metrics.
type transport uint8

const (
	transportWS transport = iota
	transportSSE
	transportPoll
	nTransports
)

var transportNames = [nTransports]string{"ws", "sse", "poll"}

// why is why a connection ended, for rtgw_disconnects_total. The first
// cause recorded wins (a slow client's socket then also fails to read).
type why uint32

const (
	whyUnset      why = iota
	whyClientGone     // the client closed, or its socket failed
	whySlow           // 4008: fell out of the replay window
	whyShutdown       // 1001: the gateway is stopping
	whyRoute          // 1000: POST /ws/disconnect
	whyTooBig         // 1009: a message over the size limit
	whyPolicy         // 1008: a limit of the connection (its message rate)
	whyError          // 1011: the gateway could not attach it
	whyOther          // any other close code
	nWhy
)

var whyNames = [nWhy]string{"", "client_gone", "slow", "shutdown", "disconnect_route", "too_big", "policy", "error", "other"}

// whyOfCode maps the close code the gateway sends to its reason. 1000 is
// only sent by /ws/disconnect.
func whyOfCode(code int) why {
	switch code {
	case 1000:
		return whyRoute
	case CloseGoingAway:
		return whyShutdown
	case CloseSlow:
		return whySlow
	case 1008:
		return whyPolicy
	case 1009:
		return whyTooBig
	case 1011:
		return whyError
	}
	return whyOther
}

// closeTag remembers why one connection ends; the first cause wins.
type closeTag struct{ v atomic.Uint32 }

func (t *closeTag) set(w why)     { t.v.CompareAndSwap(uint32(whyUnset), uint32(w)) }
func (t *closeTag) code(code int) { t.set(whyOfCode(code)) }
func (t *closeTag) get() why      { return why(t.v.Load()) }

// lagBuckets span a loopback delivery (well under a millisecond) to a
// client that pulls from the window after a long stall. 20 ms and 50 ms are
// bounds so that the share of deliveries within the performance targets'
// p99 limits is read exactly, not interpolated (rtload reports it); 75 ms
// halves the span a p99 just above 50 ms is interpolated over.
var lagBuckets = []float64{.0005, .001, .0025, .005, .01, .02, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// metrics are the gateway's Prometheus metrics, in a registry of its own.
// Hot paths cost one atomic add per event (received, delivered) and one
// histogram observation per delivery, with no allocation; everything else
// is read when scraped.
type metrics struct {
	reg *prometheus.Registry
	src Sources

	received  atomic.Uint64
	delivered [nTransports]atomic.Uint64
	open      [nTransports]atomic.Int64 // SSE streams and long-polls in flight; WebSockets come from the registry
	lag       [nTransports]prometheus.Histogram
	closing   atomic.Bool // Server.Close ran: a connection ending now ends for the shutdown

	disconnects *prometheus.CounterVec
	replays     *prometheus.CounterVec
	resets      *prometheus.CounterVec
	full        prometheus.Counter
	uringSends  prometheus.Counter
}

func newMetrics(s *Server, src Sources) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), src: src}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	lag := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rtgw_delivery_lag_seconds",
		Help:    "From an event's commit (the database's clock) to its write to a client socket (the gateway's), for live events.",
		Buckets: lagBuckets,
	}, []string{"transport"})
	m.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rtgw_disconnects_total",
		Help: "WebSocket and SSE connections ended, by reason.",
	}, []string{"transport", "reason"})
	m.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rtgw_replays_total",
		Help: "Resumes with a last event id served, by where the missed events came from (memory: the replay window; log: the event log table).",
	}, []string{"source"})
	m.resets = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rtgw_resets_total",
		Help: "Resumes answered with a reset frame, by reason (expired, unknown, invalid).",
	}, []string{"reason"})
	m.full = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rtgw_ws_socket_full_total",
		Help: "WebSocket writes that found the client's socket full (its kernel send buffer), so that a writer of the connection's own waited for room: slow clients, or a congested network. Nothing is lost; the send queue, the replay window and 4008 apply as usual.",
	})
	m.uringSends = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rtgw_ws_io_uring_sends_total",
		Help: "WebSocket writes the fan-out made through io_uring, many sockets in one system call. It stays at zero where the kernel refuses io_uring (a seccomp profile, kernel.io_uring_disabled, Linux before 5.12) or GATEWAY_IO_URING is false: every write is then a write(2).",
	})
	m.reg.MustRegister(lag, m.disconnects, m.replays, m.resets, m.full, m.uringSends)
	for i, name := range transportNames {
		// Children are resolved once: an observation is then a few atomic
		// operations, with no label lookup.
		m.lag[i] = lag.WithLabelValues(name).(prometheus.Histogram)
	}
	// Every series exists from the start, at zero, so rate() and alerts see
	// the first increase.
	for _, tr := range []transport{transportWS, transportSSE} {
		for w := whyClientGone; w < nWhy; w++ {
			m.disconnects.WithLabelValues(transportNames[tr], whyNames[w])
		}
	}
	m.replays.WithLabelValues("memory")
	m.replays.WithLabelValues("log")
	for _, r := range []string{ResetExpired, ResetUnknown, ResetInvalid} {
		m.resets.WithLabelValues(r)
	}

	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "rtgw_events_received_total",
		Help: "Events read from the event log and published to the hub.",
	}, func() float64 { return float64(m.received.Load()) }))
	for i, name := range transportNames {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "rtgw_events_delivered_total",
			Help:        "Live events written to clients (one per event and client); replays are not counted.",
			ConstLabels: prometheus.Labels{"transport": name},
		}, func() float64 { return float64(m.delivered[i].Load()) }))
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "rtgw_connections",
			Help:        "Open client connections: WebSockets, SSE streams, long-polls waiting.",
			ConstLabels: prometheus.Labels{"transport": name},
		}, func() float64 { return float64(m.connections(s, transport(i))) }))
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rtgw_ws_readers_parked",
		Help: "Idle WebSockets whose reader is parked: no goroutine until the client sends something (Linux).",
	}, func() float64 { return float64(idle.parkedN.Load()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rtgw_replay_window_events",
		Help: "Events held in memory for resumes (at most GATEWAY_REPLAY_EVENTS).",
	}, func() float64 { return float64(s.hub.windowLen()) }))
	if src.Follower != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rtgw_listen_up",
			Help: "1 while the LISTEN connection is up.",
		}, func() float64 { return b2f(src.Follower().Listening) }))
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rtgw_ready",
			Help: "1 while the gateway is ready (/readyz: LISTEN up and caught up with the log).",
		}, func() float64 { return b2f(src.Follower().Ready()) }))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "rtgw_listen_reconnects_total",
			Help: "Times the LISTEN connection was re-established after the first.",
		}, func() float64 { return float64(max(src.Follower().Listens, 1) - 1) }))
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rtgw_log_cursor_seq",
			Help: "Commit sequence of the last transaction read from the event log.",
		}, func() float64 { return float64(src.Follower().Cursor.Seq) }))
		if src.Backlog != nil {
			m.reg.MustRegister(&dbCollector{m: m})
		}
	}
	if src.BadInput != nil {
		m.reg.MustRegister(badInputCollector(src.BadInput))
	}
	if src.Capture != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rtgw_capture_streaming",
			Help: "1 while this gateway reads the capture slot (capture by logical decoding; one replica at a time).",
		}, func() float64 { return b2f(src.Capture().Streaming) }))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "rtgw_capture_transactions_total",
			Help: "Transactions this gateway decoded from the capture slot and wrote to the event log (with any the slot sent again after a reconnect, which the log skips).",
		}, func() float64 { return float64(src.Capture().Transactions) }))
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rtgw_capture_confirmed_lsn_bytes",
			Help: "WAL position this gateway last confirmed to the capture slot, in bytes; compare with pg_current_wal_lsn() for the lag.",
		}, func() float64 { return float64(src.Capture().Confirmed) }))
	}
	return m
}

// handler serves the registry in the exposition format.
func (m *metrics) handler(logger *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:          slogPrinter{logger},
		ErrorHandling:     promhttp.ContinueOnError, // a failed collector costs its metrics, not the scrape
		Timeout:           10 * time.Second,
		EnableOpenMetrics: true,
	})
}

type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.l.Warn("metrics", "err", v) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// connections counts tr's open connections.
func (m *metrics) connections(s *Server, tr transport) int64 {
	if tr == transportWS {
		s.ws.conns.mu.Lock()
		defer s.ws.conns.mu.Unlock()
		return int64(len(s.ws.conns.byID))
	}
	return m.open[tr].Load()
}

// windowLen is the number of events in the replay window.
func (h *Hub) windowLen() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ring.len()
}

// receivedN counts events published to the hub.
func (m *metrics) receivedN(n int) {
	if m != nil {
		m.received.Add(uint64(n))
	}
}

// delivered counts one live event written to a tr client, committed at commit.
func (m *metrics) delivered1(tr transport, commit time.Time) {
	if m == nil {
		return
	}
	m.delivered[tr].Add(1)
	m.lag[tr].Observe(max(time.Since(commit).Seconds(), 0))
}

// deliveredAll counts the events of one long-poll answer.
func (m *metrics) deliveredAll(tr transport, evs []*entry) {
	if m == nil {
		return
	}
	for _, e := range evs {
		m.delivered1(tr, e.Time)
	}
}

// socketFull counts a WebSocket write that found the socket without room.
func (m *metrics) socketFull() {
	if m != nil {
		m.full.Inc()
	}
}

// uringSent counts n writes made through io_uring.
func (m *metrics) uringSent(n int) {
	if m != nil {
		m.uringSends.Add(float64(n))
	}
}

// sentWS counts an entry the WebSocket writer wrote, when it is an event
// (the transport's own frames have no position).
func (m *metrics) sentWS(e *entry) {
	if e.isEvent() {
		m.delivered1(transportWS, e.Time)
	}
}

// opened counts a tr connection as open until the returned func runs, which
// also counts its end by the reason in tag (nil: not a disconnect, a
// long-poll's answer).
func (m *metrics) opened(tr transport, tag *closeTag) func() {
	if m == nil {
		return func() {}
	}
	m.open[tr].Add(1)
	return func() {
		m.open[tr].Add(-1)
		if tag != nil {
			m.disconnected(tr, tag.get())
		}
	}
}

// disconnected counts a connection's end.
func (m *metrics) disconnected(tr transport, w why) {
	if m == nil {
		return
	}
	if w == whyUnset {
		w = whyClientGone
		if m.closing.Load() {
			w = whyShutdown
		}
	}
	m.disconnects.WithLabelValues(transportNames[tr], whyNames[w]).Inc()
}

// resumed counts a resume by a client's last id, served from the log or
// from memory.
func (m *metrics) resumed(byID, fromLog bool) {
	if m == nil || !byID {
		return
	}
	src := "memory"
	if fromLog {
		src = "log"
	}
	m.replays.WithLabelValues(src).Inc()
}

// reset counts a reset frame sent.
func (m *metrics) reset(reason string) {
	if m != nil {
		m.resets.WithLabelValues(reason).Inc()
	}
}

// dbCollector reads the backlog from the database when scraped, with a
// short timeout: a scrape must not hang on a database that is down.
type dbCollector struct{ m *metrics }

var (
	descPending = prometheus.NewDesc("rtgw_log_pending_events",
		"Events committed to the event log that this gateway has not read yet (counted up to 1,000,000).", nil, nil)
	descQueue = prometheus.NewDesc("rtgw_pg_notification_queue_usage",
		"PostgreSQL's pg_notification_queue_usage(): the fraction of the NOTIFY queue in use (the commit trigger stops ringing above 0.5).", nil, nil)
	descDBUp = prometheus.NewDesc("rtgw_db_stats_up",
		"1 when the last scrape could read the two gauges above from the database, 0 when it failed or timed out (they are then absent).", nil, nil)
)

// dbStatsTimeout bounds the database read of one scrape.
const dbStatsTimeout = 2 * time.Second

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPending
	ch <- descQueue
	ch <- descDBUp
}

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	b, err := c.m.backlog(context.Background())
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descDBUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descDBUp, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(b.Pending))
	ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, b.QueueUsage)
}

// backlog reads the database gauges after the follower's cursor.
func (m *metrics) backlog(ctx context.Context) (notify.Backlog, error) {
	ctx, cancel := context.WithTimeout(ctx, dbStatsTimeout)
	defer cancel()
	return m.src.Backlog(ctx, m.src.Follower().Cursor)
}

// badInputCollector exposes the follower's counts of bad input skipped.
type badInputCollector func() (notifications, rows map[string]uint64)

var (
	descBadNotify = prometheus.NewDesc("rtgw_bad_notifications_total",
		"Notifications on the gateway's channel that were not a commit doorbell of this log, skipped, by kind.", []string{"kind"}, nil)
	descBadRows = prometheus.NewDesc("rtgw_bad_log_rows_total",
		"Rows of the event log the gateway could not use, skipped, by kind.", []string{"kind"}, nil)
)

func (f badInputCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descBadNotify
	ch <- descBadRows
}

func (f badInputCollector) Collect(ch chan<- prometheus.Metric) {
	notes, rows := f()
	for k, v := range notes {
		ch <- prometheus.MustNewConstMetric(descBadNotify, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range rows {
		ch <- prometheus.MustNewConstMetric(descBadRows, prometheus.CounterValue, float64(v), k)
	}
}
