package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricSet is one scrape of /metrics, parsed by Prometheus's own parser.
type metricSet map[string]*dto.MetricFamily

func scrapeMetrics(t testing.TB, url string) metricSet {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// value returns the sample of name with the labels (name, value pairs): a
// counter's or gauge's value, a histogram's sample count. ok is false when
// there is no such sample.
func (s metricSet) value(name string, labels ...string) (v float64, ok bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// metricWant is one expectation on a sample.
type metricWant struct {
	name   string
	labels []string
	want   float64
}

func (w metricWant) String() string {
	return fmt.Sprintf("%s{%s} = %v", w.name, strings.Join(w.labels, ","), w.want)
}

// waitMetrics scrapes until every expectation holds: the counters move on
// their own goroutines (a delivery is counted after the socket write that
// the client may already have read).
func waitMetrics(t testing.TB, url string, wants ...metricWant) metricSet {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := scrapeMetrics(t, url)
		var bad []string
		for _, w := range wants {
			if v, ok := s.value(w.name, w.labels...); !ok || v != w.want {
				bad = append(bad, fmt.Sprintf("%s (got %v, present %v)", w, v, ok))
			}
		}
		if len(bad) == 0 {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics after 15s:\n  %s", strings.Join(bad, "\n  "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metric(name string, want float64, labels ...string) metricWant {
	return metricWant{name: name, labels: labels, want: want}
}

// /metrics on a real gateway: the values move as events flow, connections
// open and close on each transport, clients resume from memory and from the
// log, get resets, are disconnected for each reason the test can cause,
// the LISTEN connection is replaced, and events committed without a
// doorbell show as pending until the gateway reads them.
func TestMetricsFollowTheGateway(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	// A small window and queue, so resumes from the log and a slow client
	// are cheap to cause; no safety poll, so an event committed without a
	// NOTIFY stays pending until the test rings.
	g := startGateway(t, db, "GATEWAY_REPLAY_EVENTS=16", "GATEWAY_SEND_QUEUE=4", "GATEWAY_WRITE_TIMEOUT=30s", "GATEWAY_POLL_INTERVAL=1h")
	url := g.base + "/metrics"

	s := waitMetrics(t, url,
		metric("rtgw_connections", 0, "transport", "ws"), metric("rtgw_connections", 0, "transport", "sse"), metric("rtgw_connections", 0, "transport", "poll"),
		metric("rtgw_events_received_total", 0), metric("rtgw_listen_up", 1), metric("rtgw_ready", 1), metric("rtgw_listen_reconnects_total", 0),
		metric("rtgw_db_stats_up", 1), metric("rtgw_log_pending_events", 0),
		metric("rtgw_disconnects_total", 0, "transport", "ws", "reason", "slow"), metric("rtgw_ws_socket_full_total", 0),
		metric("rtgw_ws_readers_parked", 0))
	if q, ok := s.value("rtgw_pg_notification_queue_usage"); !ok || q < 0 || q > 1 {
		t.Fatalf("rtgw_pg_notification_queue_usage = %v (present %v), want a fraction", q, ok)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "rtgw_delivery_lag_seconds", "rtgw_replay_window_events", "rtgw_log_cursor_seq"} {
		if _, ok := s.value(name); !ok {
			t.Errorf("no %s in /metrics", name)
		}
	}

	// One client of each transport.
	ws := dialWS(t, g, "")
	sse := dialSSE(t, g, "", nil)
	polled := make(chan int, 1)
	go func() {
		_, body, err := getJSON(g.base + "/api/v1/budget/poll?since=0&timeout=30")
		evs, _ := body["events"].([]any)
		if err != nil {
			polled <- -1
			return
		}
		polled <- len(evs)
	}()
	// The WebSocket, idle, has its reader parked.
	waitMetrics(t, url, metric("rtgw_connections", 1, "transport", "ws"), metric("rtgw_connections", 1, "transport", "sse"),
		metric("rtgw_connections", 1, "transport", "poll"), metric("rtgw_ws_readers_parked", 1))

	// Five commits reach both streams and the waiting poll.
	for i := range 5 {
		db.insertFact(t, i, "2026-01-10")
	}
	first := ws.take(t, 5)
	sse.take(t, 5)
	var n int
	select {
	case n = <-polled:
	case <-time.After(20 * time.Second):
		t.Fatal("the long-poll did not answer")
	}
	if n < 1 {
		t.Fatalf("the long-poll answered %d events", n)
	}
	waitMetrics(t, url, metric("rtgw_events_received_total", 5),
		metric("rtgw_events_delivered_total", 5, "transport", "ws"), metric("rtgw_events_delivered_total", 5, "transport", "sse"),
		metric("rtgw_events_delivered_total", float64(n), "transport", "poll"),
		metric("rtgw_delivery_lag_seconds", 5, "transport", "ws"), metric("rtgw_delivery_lag_seconds", 5, "transport", "sse"),
		metric("rtgw_delivery_lag_seconds", float64(n), "transport", "poll"),
		metric("rtgw_connections", 0, "transport", "poll"), metric("rtgw_replay_window_events", 5))

	// Resumes: from memory, and a reset for an id that is not one.
	fromMemory := dialWS(t, g, "last_event_id="+first[0].ID)
	fromMemory.take(t, 4)
	bad := dialWS(t, g, "last_event_id=nonsense")
	if f := bad.next(t, 10*time.Second); f.Type != "reset" {
		t.Fatalf("resume from nonsense: first frame %s, want reset", f.Type)
	}
	// One statement of 20 rows pushes the first ids out of the 16-event
	// window: a resume from them is read from the log.
	db.exec(t, `INSERT INTO facts (amount, fact_date) SELECT g, '2026-01-11' FROM generate_series(100, 119) g`)
	ws.take(t, 20)
	fromLog := dialWS(t, g, "last_event_id="+first[0].ID)
	fromLog.take(t, 24)
	waitMetrics(t, url, metric("rtgw_replays_total", 1, "source", "memory"), metric("rtgw_replays_total", 1, "source", "log"),
		metric("rtgw_resets_total", 1, "reason", "invalid"), metric("rtgw_resets_total", 0, "reason", "expired"),
		metric("rtgw_events_received_total", 25), metric("rtgw_replay_window_events", 16), metric("rtgw_connections", 4, "transport", "ws"))

	// An event committed without a doorbell (triggers off, as a replica
	// applying changes would run) is pending until the gateway is rung.
	pending(t, db)
	waitMetrics(t, url, metric("rtgw_log_pending_events", 1), metric("rtgw_events_received_total", 25))
	db.exec(t, `SELECT pg_notify('rtgw', (SELECT max(seq) FROM rtgw.tx)::text)`)
	if f := ws.next(t, 10*time.Second); f.Type != "article_created" {
		t.Fatalf("after the doorbell: %s, want the quiet article_created", f.Type)
	}
	waitMetrics(t, url, metric("rtgw_log_pending_events", 0), metric("rtgw_events_received_total", 26))

	// Input that is not the gateway's is counted by kind and skipped (the
	// follower's Stats): a NOTIFY that is no doorbell, a log row with a bad
	// type (rung by the notification of the next real commit).
	db.exec(t, `SELECT pg_notify('rtgw', 'not a number')`)
	db.exec(t, badLogRow("public.facts", "I", "bad type", `{"id": 1}`))
	db.insertFact(t, 7, "2026-01-10")
	if f := ws.next(t, 10*time.Second); f.Type != "budget_fact_created" {
		t.Fatalf("after the bad input: %s, want budget_fact_created", f.Type)
	}
	waitMetrics(t, url, metric("rtgw_bad_notifications_total", 1, "kind", "malformed"),
		metric("rtgw_bad_log_rows_total", 1, "kind", "type"), metric("rtgw_events_received_total", 27))

	// The LISTEN backend is terminated: the follower reconnects.
	pid := faultListenPID(t, db, nil)
	db.exec(t, `SELECT pg_terminate_backend($1)`, pid)
	waitMetrics(t, url, metric("rtgw_listen_reconnects_total", 1), metric("rtgw_listen_up", 1))

	// Disconnects: clients that go away, the /ws/disconnect route, a
	// message over the size limit, messages over the rate limit.
	fromMemory.conn.Close()
	bad.conn.Close()
	sse.resp.Body.Close()
	resp, err := http.Post(g.base+"/api/v1/budget/ws/disconnect", "application/json", strings.NewReader(`{"connection_id":"`+ws.id+`"}`))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /ws/disconnect: %v %v", resp, err)
	}
	resp.Body.Close()
	if err := fromLog.conn.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", 8192))); err != nil {
		t.Fatalf("write a big message: %v", err)
	}
	flood := dialWS(t, g, "") // faster than GATEWAY_MESSAGE_RATE allows after its burst of 20
	for range 60 {
		if flood.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"junk"}`)) != nil {
			break
		}
	}
	waitMetrics(t, url,
		metric("rtgw_disconnects_total", 1, "transport", "ws", "reason", "policy"),
		metric("rtgw_disconnects_total", 2, "transport", "ws", "reason", "client_gone"),
		metric("rtgw_disconnects_total", 1, "transport", "ws", "reason", "disconnect_route"),
		metric("rtgw_disconnects_total", 1, "transport", "ws", "reason", "too_big"),
		metric("rtgw_disconnects_total", 1, "transport", "sse", "reason", "client_gone"),
		metric("rtgw_connections", 0, "transport", "ws"), metric("rtgw_connections", 0, "transport", "sse"),
		metric("rtgw_ws_readers_parked", 0))

	// A client that stops reading is cut as slow (4008) once it falls out
	// of the window; big rows fill the socket buffers so it does. The hub
	// drops it at once (/readyz counts its clients); the connection ends,
	// and is counted, once its close frame is through, so it reads then.
	healthy := dialWS(t, g, "")
	slow := dialSlowWS(t, g)
	clients := func() any { _, body, _ := getJSON(g.base + "/readyz"); return body["clients"] }
	waitFor(t, 10*time.Second, "both clients to be attached", func() bool { return clients() == 2.0 })
	desc := strings.Repeat("0123456789abcdef", 200*1024/16)
	for i := 0; clients() != 1.0; i++ {
		if i == 200 {
			t.Fatal("the slow client was not cut after 200 events of 200 KB")
		}
		db.exec(t, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-12', $2)`, i, desc)
		healthy.next(t, 10*time.Second)
	}
	_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	var readErr error
	for readErr == nil {
		_, _, readErr = slow.ReadMessage()
	}
	if ce, ok := readErr.(*websocket.CloseError); !ok || ce.Code != 4008 {
		t.Fatalf("slow client: ended with %v, want close 4008", readErr)
	}
	s = waitMetrics(t, url, metric("rtgw_disconnects_total", 1, "transport", "ws", "reason", "slow"),
		metric("rtgw_connections", 1, "transport", "ws"))
	// Its socket filled before it fell out of the window: the writes that
	// found it full were counted.
	if n, ok := s.value("rtgw_ws_socket_full_total"); !ok || n < 1 {
		t.Errorf("rtgw_ws_socket_full_total = %v (present %v) after a client stopped reading, want at least 1", n, ok)
	}
}

// pending commits one article_created event straight into the log with
// triggers off, so no NOTIFY rings.
func pending(t *testing.T, db *testDB) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{
		`SET session_replication_role = replica`,
		`BEGIN`,
		`INSERT INTO rtgw.tx (xid, seq, committed_at) VALUES (pg_current_xact_id(), nextval('rtgw.tx_seq'), clock_timestamp())`,
		`INSERT INTO rtgw.event (xid, tbl, op, type, data) VALUES (pg_current_xact_id(), 'public.articles', 'I', 'article_created', '{"id": 999, "name": "quiet"}')`,
		`COMMIT`,
	} {
		if _, err := conn.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// GATEWAY_METRICS_ADDR moves /metrics to a listener of its own, or (off)
// removes it.
func TestMetricsAddress(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	addr := freeAddr(t)
	g := startGateway(t, db, "GATEWAY_METRICS_ADDR="+addr)
	waitFor(t, 10*time.Second, "the metrics listener", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if _, ok := scrapeMetrics(t, "http://"+addr+"/metrics").value("rtgw_ready"); !ok {
		t.Fatal("no rtgw_ready on the metrics address")
	}
	resp, err := http.Get(g.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics on GATEWAY_ADDR with GATEWAY_METRICS_ADDR set: status %d, want 404", resp.StatusCode)
	}

	off := startGateway(t, db, "GATEWAY_METRICS_ADDR=off")
	resp, err = http.Get(off.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics with GATEWAY_METRICS_ADDR=off: status %d, want 404", resp.StatusCode)
	}
}
