package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/budget-rt/gateway/notify/pgtest"
)

// Chaos tests: faults around a running gateway while writers commit and
// real clients (WebSocket and SSE, reconnecting with their last id like the
// app's client) listen. After each fault every client must hold exactly the
// event log: nothing lost, nothing repeated, commit order kept. Writers talk
// to PostgreSQL directly; an in-process TCP proxy (toxiproxy) sits between
// the gateway and the database so the network can be cut or slowed.
//
// The killing of the LISTEN backend is TestFaultListenLossLosesNothing.
//
// None of these tests runs in parallel: the restart tests stop the cluster
// every test of the package shares (Go runs the sequential tests before it
// resumes the parallel ones, so they disturb no one), and the others measure
// latencies, which are only meaningful on a machine that is not busy with the
// rest of the suite.

// chaosPoll is the safety poll of every gateway here: short, so a fault the
// doorbell cannot cover costs little.
const chaosPoll = "GATEWAY_POLL_INTERVAL=200ms"

// --- writers ---

// chaosWriter commits single-row inserts of facts, one per transaction,
// description = its name, amount = a counter that grows by one per attempt.
// A failed attempt is not retried with the same counter: its commit may or
// may not have happened (the connection died during COMMIT), and the table
// tells at the end. The counters of one writer therefore increase in commit
// order, whatever failed in between.
type chaosWriter struct {
	name  string
	pool  *pgxpool.Pool
	every time.Duration

	mu      sync.Mutex
	acked   map[int64]chaosWrite // COMMIT returned success
	failed  map[int64]string     // the attempt failed: not committed, or unknown
	stop    chan struct{}
	done    chan struct{}
	stopped bool
}

type chaosWrite struct {
	start, ack time.Time
}

// chaosWriterPool opens the writers' own pool, straight to PostgreSQL, with
// synchronous_commit on: pgtest runs the cluster with it off, and then a
// crash can lose a commit its writer was told had succeeded.
func chaosWriterPool(t *testing.T, db *testDB) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(db.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "chaos-writer"
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("writer pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// startWriter starts a writer committing about one row per every.
func startWriter(t *testing.T, pool *pgxpool.Pool, name string, every time.Duration) *chaosWriter {
	w := &chaosWriter{name: name, pool: pool, every: every,
		acked: map[int64]chaosWrite{}, failed: map[int64]string{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	t.Cleanup(w.halt)
	return w
}

func (w *chaosWriter) run() {
	defer close(w.done)
	const maxAttempts = 50000 // bounded, whatever happens to the test
	for i := range int64(maxAttempts) {
		select {
		case <-w.stop:
			return
		default:
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := w.pool.Exec(ctx, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-15', $2)`, i, w.name)
		cancel()
		ack := time.Now()
		w.mu.Lock()
		if err != nil {
			w.failed[i] = err.Error()
		} else {
			w.acked[i] = chaosWrite{start: start, ack: ack}
		}
		w.mu.Unlock()
		pause := w.every
		if err != nil {
			pause = 20 * time.Millisecond // the database is down: retry soon, not in a hot loop
		}
		select {
		case <-w.stop:
			return
		case <-time.After(pause):
		}
	}
}

// halt stops the writer and waits for its last attempt to end.
func (w *chaosWriter) halt() {
	w.mu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.stop)
	}
	w.mu.Unlock()
	<-w.done
}

func (w *chaosWriter) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *chaosWriter) failedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.failed)
}

// writes returns a copy of the acknowledged writes.
func (w *chaosWriter) writes() map[int64]chaosWrite {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[int64]chaosWrite, len(w.acked))
	for k, v := range w.acked {
		out[k] = v
	}
	return out
}

// waitAcked waits until the writers together have acknowledged n more rows
// than they had when it was called.
func waitAcked(t *testing.T, ws []*chaosWriter, n int, timeout time.Duration) {
	t.Helper()
	total := func() int {
		s := 0
		for _, w := range ws {
			s += w.ackedCount()
		}
		return s
	}
	want := total() + n
	if !faultPoll(timeout, func() bool { return total() >= want }) {
		t.Fatalf("writers acknowledged %d of %d rows within %s", total(), want, timeout)
	}
}

// --- clients ---

// chaosEvent is one event as a client received it.
type chaosEvent struct {
	ID, Type string
	Writer   string // the fact's description, or the article's name
	N        int64  // the fact's amount
	At       time.Time
}

// chaosClient is a WebSocket or SSE client that, like the app's, reconnects
// with its last id whenever its connection drops, and records every event.
type chaosClient struct {
	name string
	sse  bool

	mu         sync.Mutex
	base       string // the gateway it (re)connects to
	events     []chaosEvent
	last       string
	connects   int
	dropped    time.Time       // when the current outage began (zero while connected)
	outages    []time.Duration // from each drop to the next successful connect
	violations []string        // reset frames, undecodable frames
	closeConn  func()
	stopped    bool

	first chan error
	done  chan struct{}
}

// startClient connects a client to base and returns once it is attached
// (WebSocket: the connected frame; SSE: the response headers), so every
// commit from then on must reach it.
func startClient(t *testing.T, name, base string, sse bool) *chaosClient {
	t.Helper()
	c := &chaosClient{name: name, sse: sse, base: base, first: make(chan error, 1), done: make(chan struct{})}
	go c.run()
	t.Cleanup(c.close)
	select {
	case err := <-c.first:
		if err != nil {
			t.Fatalf("client %s: first connect: %v", name, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("client %s: not connected within 10s", name)
	}
	return c
}

func (c *chaosClient) run() {
	defer close(c.done)
	backoff := 25 * time.Millisecond
	deadline := time.Now().Add(5 * time.Minute) // bounded, whatever happens to the test
	for time.Now().Before(deadline) {
		c.mu.Lock()
		if c.stopped {
			c.mu.Unlock()
			return
		}
		base, last, connects := c.base, c.last, c.connects
		c.mu.Unlock()
		var err error
		if c.sse {
			err = c.sessionSSE(base, last)
		} else {
			err = c.sessionWS(base, last)
		}
		c.mu.Lock()
		never := c.connects == 0
		c.mu.Unlock()
		if err != nil && never {
			c.first <- err // never connected: startClient fails the test
			return
		}
		c.mu.Lock()
		if c.stopped {
			c.mu.Unlock()
			return
		}
		if c.dropped.IsZero() {
			c.dropped = time.Now()
		}
		if c.connects > connects {
			backoff = 25 * time.Millisecond // it was connected: start over
		}
		c.mu.Unlock()
		// Jittered, doubling backoff, like a real client.
		time.Sleep(backoff/2 + rand.N(backoff/2+1))
		backoff = min(backoff*2, 400*time.Millisecond)
	}
}

// connected records a successful (re)connect; closer closes the connection.
func (c *chaosClient) connected(closer func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		closer()
		return false
	}
	c.connects++
	if !c.dropped.IsZero() {
		c.outages = append(c.outages, time.Since(c.dropped))
		c.dropped = time.Time{}
	}
	c.closeConn = closer
	if c.connects == 1 {
		c.first <- nil
	}
	return true
}

// record handles one frame's JSON.
func (c *chaosClient) record(msg []byte) {
	at := time.Now()
	var f frame
	if err := json.Unmarshal(msg, &f); err != nil {
		c.violate("undecodable frame %.200s", msg)
		return
	}
	switch f.Type {
	case "connected", "ping", "pong", "online_status":
		return
	case "reset":
		c.violate("reset frame %s %s", f.ID, f.Data)
		return
	}
	ev := chaosEvent{ID: f.ID, Type: f.Type, At: at}
	var row struct {
		Description *string `json:"description"`
		Name        *string `json:"name"`
		Amount      int64   `json:"amount"`
	}
	if err := json.Unmarshal(f.Data, &row); err != nil {
		c.violate("event %s: data %.200s: %v", f.ID, f.Data, err)
	}
	switch {
	case row.Description != nil:
		ev.Writer = *row.Description
	case row.Name != nil:
		ev.Writer = *row.Name
	}
	ev.N = row.Amount
	c.mu.Lock()
	c.events = append(c.events, ev)
	c.last = f.ID
	c.mu.Unlock()
}

func (c *chaosClient) violate(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.violations) < 20 {
		c.violations = append(c.violations, fmt.Sprintf(format, args...))
	}
}

func (c *chaosClient) sessionWS(base, last string) error {
	u := "ws" + strings.TrimPrefix(base, "http") + "/api/v1/budget/ws"
	if last != "" {
		u += "?last_event_id=" + url.QueryEscape(last)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial(u, nil)
	if err != nil {
		if resp != nil {
			return fmt.Errorf("dial %s: %w (status %d)", u, err, resp.StatusCode)
		}
		return fmt.Errorf("dial %s: %w", u, err)
	}
	defer conn.Close()
	// The first frame is connected: from then on, the client is attached.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, msg, err := conn.ReadMessage()
	if err != nil {
		return fmt.Errorf("read connected frame: %w", err)
	}
	if !strings.Contains(string(msg), `"type":"connected"`) {
		return fmt.Errorf("first frame %.200s, want connected", msg)
	}
	_ = conn.SetReadDeadline(time.Time{})
	if !c.connected(func() { conn.Close() }) {
		return nil
	}
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		c.record(msg)
	}
}

// chaosHTTP has no timeout (streams live on) and keeps no idle connections,
// so a connection to a killed gateway is never reused.
var chaosHTTP = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func (c *chaosClient) sessionSSE(base, last string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/budget/events", nil)
	if err != nil {
		return err
	}
	if last != "" {
		req.Header.Set("Last-Event-ID", last) // as EventSource resends it
	}
	resp, err := chaosHTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET events: status %d", resp.StatusCode)
	}
	if !c.connected(cancel) {
		return nil
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 8<<20)
	var data strings.Builder
	var event string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data.Len() > 0 {
				if event == "reset" {
					c.violate("SSE reset %s", data.String())
				} else {
					c.record([]byte(data.String()))
				}
			}
			data.Reset()
			event = ""
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("SSE stream ended")
}

// moveTo makes the client drop its connection and resume on another
// gateway with its last id.
func (c *chaosClient) moveTo(base string) {
	c.mu.Lock()
	c.base = base
	closer := c.closeConn
	c.mu.Unlock()
	if closer != nil {
		closer()
	}
}

func (c *chaosClient) close() {
	c.mu.Lock()
	c.stopped = true
	closer := c.closeConn
	c.mu.Unlock()
	if closer != nil {
		closer()
	}
	<-c.done
}

func (c *chaosClient) snapshot() (events []chaosEvent, connects int, outages []time.Duration, violations []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events), c.connects, slices.Clone(c.outages), slices.Clone(c.violations)
}

func (c *chaosClient) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

// countOf counts the events of writers named in names.
func (c *chaosClient) countOf(names ...string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range c.events {
		if slices.Contains(names, e.Writer) {
			n++
		}
	}
	return n
}

// --- readiness ---

// chaosProbe asks /readyz with a short timeout (a stopped process never
// answers) and returns the status and reason; 0 when there was no answer.
func chaosProbe(base string) (int, string) {
	client := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(base + "/readyz")
	if err != nil {
		return 0, "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		Reason string `json:"reason"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Reason
}

// chaosWaitReady polls /readyz until it answers 200 and returns how long
// that took.
func chaosWaitReady(t *testing.T, base string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var code int
	var reason string
	if !faultPoll(timeout, func() bool { code, reason = chaosProbe(base); return code == http.StatusOK }) {
		t.Fatalf("/readyz of %s not 200 within %s: last %d %s", base, timeout, code, reason)
	}
	return time.Since(start)
}

// readySample is one answer of /readyz.
type readySample struct {
	at     time.Time
	code   int
	reason string
}

// readyWatch polls /readyz every 50 ms in the background.
type readyWatch struct {
	mu      sync.Mutex
	samples []readySample
	stop    chan struct{}
	done    chan struct{}
}

func watchReady(t *testing.T, base string) *readyWatch {
	r := &readyWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for range 10000 { // bounded: 10,000 probes of at least 50 ms
			code, reason := chaosProbe(base)
			r.mu.Lock()
			r.samples = append(r.samples, readySample{time.Now(), code, reason})
			r.mu.Unlock()
			select {
			case <-r.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(r.stop) }); <-r.done })
	return r
}

// between returns the samples taken in [from, to].
func (r *readyWatch) between(from, to time.Time) []readySample {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []readySample
	for _, s := range r.samples {
		if !s.at.Before(from) && !s.at.After(to) {
			out = append(out, s)
		}
	}
	return out
}

// firstNotOK returns the first answer in [from, to] other than 200.
func (r *readyWatch) firstNotOK(from, to time.Time) (readySample, bool) {
	for _, s := range r.between(from, to) {
		// A probe that got no answer in time says nothing about readiness
		// (the test process itself may be starved on a busy machine); only
		// an answer other than 200 counts.
		if s.code != http.StatusOK && s.code != 0 {
			return s, true
		}
	}
	return readySample{}, false
}

// reasons summarises the answers in [from, to]: "200 x12, 503 LISTEN... x3".
func (r *readyWatch) reasons(from, to time.Time) string {
	var keys []string
	counts := map[string]int{}
	for _, s := range r.between(from, to) {
		k := fmt.Sprintf("%d %s", s.code, s.reason)
		if counts[k] == 0 {
			keys = append(keys, k)
		}
		counts[k]++
	}
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%q x%d", k, counts[k])
	}
	return b.String()
}

// --- the fault proxy ---

// chaosProxy is a toxiproxy TCP proxy in this process.
type chaosProxy struct {
	p *toxiproxy.Proxy
}

// newChaosProxy proxies 127.0.0.1:<free port> to upstream.
func newChaosProxy(t *testing.T, upstream string) *chaosProxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "postgres", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return &chaosProxy{p: p}
}

// url is dbURL with its host replaced by the proxy's address.
func (cp *chaosProxy) url(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cp.p.Lock()
	u.Host = cp.p.Listen // the bound address, once started
	cp.p.Unlock()
	return u.String()
}

// toxic adds a toxic in both directions; the returned function removes them.
func (cp *chaosProxy) toxic(t *testing.T, typ string, attrs map[string]any) func() {
	t.Helper()
	var names []string
	for _, stream := range []string{"upstream", "downstream"} {
		name := typ + "_" + stream
		spec, err := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "attributes": attrs})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cp.p.Toxics.AddToxicJson(strings.NewReader(string(spec))); err != nil {
			t.Fatalf("add toxic %s: %v", spec, err)
		}
		names = append(names, name)
	}
	var once sync.Once
	remove := func() {
		once.Do(func() {
			// Removing a toxic that holds data (latency) can hang forever
			// when a connection under it has died (Shopify/toxiproxy#558):
			// fail instead of waiting for the test binary's timeout.
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, n := range names {
					if err := cp.p.Toxics.RemoveToxic(context.Background(), n); err != nil {
						t.Errorf("remove toxic %s: %v", n, err)
					}
				}
			}()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Fatalf("removing the %s toxics hung for 15s (toxiproxy bug, Shopify/toxiproxy#558)", typ)
			}
		})
	}
	t.Cleanup(remove)
	return remove
}

// --- the rig: database, gateway, writers, clients, and the final check ---

type chaosRig struct {
	db      *testDB
	writers []*chaosWriter
	clients []*chaosClient
}

// startWriters starts n writers named w0, w1, ... on their own pool.
func (r *chaosRig) startWriters(t *testing.T, n int, every time.Duration) {
	pool := chaosWriterPool(t, r.db)
	for i := range n {
		r.writers = append(r.writers, startWriter(t, pool, fmt.Sprintf("w%d", i), every))
	}
}

// startClients connects one WebSocket and one SSE client to base.
func (r *chaosRig) startClients(t *testing.T, base, where string) {
	t.Helper()
	r.clients = append(r.clients, startClient(t, "websocket"+where, base, false), startClient(t, "sse"+where, base, true))
}

// chaosLogRow is one event of the log, straight from the tables.
type chaosLogRow struct {
	ID, Type, Writer string
	N                int64
}

func chaosLog(t *testing.T, db *testDB) []chaosLogRow {
	t.Helper()
	rows, err := db.pool.Query(context.Background(), `
SELECT t.seq::text || '-' || e.id::text, e.type, coalesce(e.data->>'description', e.data->>'name', ''),
       coalesce((e.data->>'amount')::bigint, 0)
FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid
WHERE t.seq IS NOT NULL ORDER BY t.seq, e.id`)
	if err != nil {
		t.Fatalf("read event log: %v", err)
	}
	defer rows.Close()
	var out []chaosLogRow
	for rows.Next() {
		var r chaosLogRow
		if err := rows.Scan(&r.ID, &r.Type, &r.Writer, &r.N); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read event log: %v", err)
	}
	return out
}

// finish stops the writers, commits an end marker, and checks that:
//   - every row a writer was told had committed is in the table, and every
//     row in the table was either acknowledged or an attempt whose outcome
//     the writer could not know;
//   - the event log holds every row of the table exactly once;
//   - every client received exactly the event log, in its order (nothing
//     lost, nothing repeated, commit order), each writer's counter
//     increasing, and never a reset.
//
// It returns the log.
func (r *chaosRig) finish(t *testing.T) []chaosLogRow {
	t.Helper()
	ctx := context.Background()
	for _, w := range r.writers {
		w.halt()
	}
	// The test's own pool may hold connections a restart killed.
	r.db.pool.Reset()
	r.db.exec(t, `INSERT INTO articles (name) VALUES ('end')`)

	// The table is the truth about what committed.
	table := map[string]map[int64]int{}
	rows, err := r.db.pool.Query(ctx, `SELECT coalesce(description, ''), amount FROM facts`)
	if err != nil {
		t.Fatal(err)
	}
	nrows := 0
	for rows.Next() {
		var w string
		var n int64
		if err := rows.Scan(&w, &n); err != nil {
			t.Fatal(err)
		}
		if table[w] == nil {
			table[w] = map[int64]int{}
		}
		table[w][n]++
		nrows++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, w := range r.writers {
		w.mu.Lock()
		var lost, phantom []int64
		for n := range w.acked {
			if table[w.name][n] != 1 {
				lost = append(lost, n)
			}
		}
		uncertainCommitted := 0
		for n := range table[w.name] {
			if _, ok := w.acked[n]; ok {
				continue
			}
			if _, ok := w.failed[n]; ok {
				uncertainCommitted++
				continue
			}
			phantom = append(phantom, n)
		}
		acked, failed := len(w.acked), len(w.failed)
		var someErr string
		for _, e := range w.failed {
			someErr = e
			break
		}
		w.mu.Unlock()
		slices.Sort(lost)
		slices.Sort(phantom)
		if len(lost) > 0 {
			t.Errorf("writer %s: %d acknowledged commits are not in the table (first %v)", w.name, len(lost), lost[:min(len(lost), 10)])
		}
		if len(phantom) > 0 {
			t.Errorf("writer %s: rows %v are in the table but were never attempted", w.name, phantom[:min(len(phantom), 10)])
		}
		t.Logf("writer %s: %d commits acknowledged, %d attempts failed (%d of them committed anyway)%s",
			w.name, acked, failed, uncertainCommitted, map[bool]string{true: "; e.g. " + someErr, false: ""}[failed > 0])
	}

	log := chaosLog(t, r.db)
	if len(log) == 0 || log[len(log)-1].Writer != "end" {
		t.Fatalf("the log does not end with the end marker: %v", log[max(0, len(log)-3):])
	}
	inLog := map[string]map[int64]int{}
	for _, e := range log[:len(log)-1] {
		if e.Type != "budget_fact_created" {
			t.Fatalf("unexpected event in the log: %+v", e)
		}
		if inLog[e.Writer] == nil {
			inLog[e.Writer] = map[int64]int{}
		}
		inLog[e.Writer][e.N]++
	}
	if len(log)-1 != nrows {
		t.Errorf("the log holds %d fact events, the table %d rows", len(log)-1, nrows)
	}
	for w, ns := range table {
		for n, k := range ns {
			if k != 1 || inLog[w][n] != 1 {
				t.Errorf("row %s/%d: %d times in the table, %d times in the log", w, n, k, inLog[w][n])
			}
		}
	}

	want := make([]string, len(log))
	for i, e := range log {
		want[i] = e.ID
	}
	for _, c := range r.clients {
		if !faultPoll(30*time.Second, func() bool { return c.count() >= len(log) }) {
			t.Errorf("client %s: received %d events within 30s, the log holds %d", c.name, c.count(), len(log))
		}
		evs, connects, outages, violations := c.snapshot()
		for _, v := range violations {
			t.Errorf("client %s: %s", c.name, v)
		}
		got := make([]string, len(evs))
		for i, e := range evs {
			got[i] = e.ID
		}
		if !slices.Equal(got, want) {
			t.Errorf("client %s: %s", c.name, chaosDiff(got, want))
		}
		// Each writer's counter increases, as it committed them.
		prev := map[string]int64{}
		for _, e := range evs {
			if e.Writer == "end" {
				continue
			}
			if p, ok := prev[e.Writer]; ok && e.N <= p {
				t.Errorf("client %s: %s/%d after %s/%d: out of commit order", c.name, e.Writer, e.N, e.Writer, p)
				break
			}
			prev[e.Writer] = e.N
		}
		t.Logf("client %s: %d events (log %d), %d connections, outages %v", c.name, len(evs), len(log), connects, roundAll(outages))
	}
	return log
}

// chaosDiff describes how got differs from want.
func chaosDiff(got, want []string) string {
	inWant := map[string]bool{}
	for _, id := range want {
		inWant[id] = true
	}
	seen := map[string]int{}
	var dups, extra []string
	for _, id := range got {
		seen[id]++
		if seen[id] == 2 {
			dups = append(dups, id)
		}
		if !inWant[id] {
			extra = append(extra, id)
		}
	}
	var lost []string
	for _, id := range want {
		if seen[id] == 0 {
			lost = append(lost, id)
		}
	}
	first := 0
	for first < len(got) && first < len(want) && got[first] == want[first] {
		first++
	}
	head := func(s []string) []string { return s[:min(len(s), 10)] }
	return fmt.Sprintf("received %d events, the log holds %d: %d lost %v, %d duplicated %v, %d not in the log %v; first difference at %d",
		len(got), len(want), len(lost), head(lost), len(dups), head(dups), len(extra), head(extra), first)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// quantile returns the q-quantile (0..1) of ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// latencies returns, for client c, the time from each acknowledged commit
// of the writers to its delivery, for the writes with keep(write) true.
func latencies(c *chaosClient, ws []*chaosWriter, keep func(chaosWrite) bool) []time.Duration {
	acks := map[string]map[int64]chaosWrite{}
	for _, w := range ws {
		acks[w.name] = w.writes()
	}
	evs, _, _, _ := c.snapshot()
	var out []time.Duration
	for _, e := range evs {
		if wr, ok := acks[e.Writer][e.N]; ok && keep(wr) {
			out = append(out, e.At.Sub(wr.ack))
		}
	}
	return out
}

func latencySummary(ds []time.Duration) string {
	return fmt.Sprintf("n=%d median %v p95 %v max %v", len(ds), quantile(ds, 0.5).Round(100*time.Microsecond),
		quantile(ds, 0.95).Round(100*time.Microsecond), quantile(ds, 1).Round(100*time.Microsecond))
}

// commitLatencies returns the commit times (start to acknowledgement) of
// writes that started in [from, to].
func commitLatencies(ws []*chaosWriter, from, to time.Time) []time.Duration {
	var out []time.Duration
	for _, w := range ws {
		for _, wr := range w.writes() {
			if !wr.start.Before(from) && !wr.start.After(to) {
				out = append(out, wr.ack.Sub(wr.start))
			}
		}
	}
	return out
}

// --- gateway processes ---

// chaosProc is the real gateway binary, started, killed and restarted on a
// fixed address.
type chaosProc struct {
	bin, addr string
	env       []string
	cmd       *exec.Cmd
	exited    chan error
	stderr    *lockedBuffer
	starts    int
}

func newChaosProc(t *testing.T, bin string, db *testDB) *chaosProc {
	p := &chaosProc{bin: bin, addr: freeAddr(t), stderr: &lockedBuffer{},
		env: []string{"DATABASE_URL=" + db.url, "GATEWAY_INSECURE_NO_AUTH=true", "GATEWAY_LOG_FORMAT=text",
			"GATEWAY_LOG_LEVEL=debug", "GATEWAY_PING_INTERVAL=1h", chaosPoll}}
	p.env = append(p.env, "GATEWAY_ADDR="+p.addr)
	t.Cleanup(func() {
		if p.cmd != nil {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			out := p.stderr.String()
			t.Logf("gateway %s stderr (last 8 KB):\n%s", p.addr, out[max(0, len(out)-8192):])
		}
	})
	return p
}

func (p *chaosProc) base() string { return "http://" + p.addr }

// start runs the binary and waits until /readyz says 200.
func (p *chaosProc) start(t *testing.T) time.Duration {
	t.Helper()
	p.starts++
	fmt.Fprintf(p.stderr, "--- start %d\n", p.starts)
	cmd := exec.Command(p.bin, "serve")
	cmd.Env = p.env
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start gateway: %v", err)
	}
	p.cmd = cmd
	p.exited = make(chan error, 1)
	go func() { p.exited <- cmd.Wait() }()
	return chaosWaitReady(t, p.base(), 20*time.Second)
}

// kill SIGKILLs the process and waits for it to be gone.
func (p *chaosProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("gateway still running 10s after SIGKILL")
	}
	p.cmd = nil
}

func (p *chaosProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// --- the faults ---

// TestChaosPostgresRestart: PostgreSQL stops (fast: sessions are told;
// immediate: a crash, with recovery at start) under a gateway, its clients
// and two writers, stays down for a second while the writers fail, and
// starts again. The gateway reports not ready while it is down, is ready
// again soon after, and every client holds exactly the log.
func TestChaosPostgresRestart(t *testing.T) {
	for _, mode := range []string{"fast", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			// No t.Parallel: the cluster is shared (see the top of the file).
			cluster := pgtest.Shared(t)
			db := newTestDB(t)
			// Registered after newTestDB's cleanup, so it runs first: the
			// database can only be dropped from a running cluster.
			t.Cleanup(func() {
				if err := cluster.Start(); err != nil {
					t.Errorf("restore the cluster: %v", err)
				}
			})
			proxy := newChaosProxy(t, mustHost(t, db.url))
			g := startGateway(t, db, "DATABASE_URL="+proxy.url(t, db.url), chaosPoll)
			r := &chaosRig{db: db}
			r.startClients(t, g.base, "")
			r.startWriters(t, 2, 5*time.Millisecond)
			waitAcked(t, r.writers, 100, 20*time.Second)
			ready := watchReady(t, g.base)

			stopAt := time.Now()
			if err := cluster.Stop(mode); err != nil {
				t.Fatalf("stop postgres (%s): %v", mode, err)
			}
			stopped := time.Now()
			failedBefore := 0
			for _, w := range r.writers {
				failedBefore += w.failedCount()
			}
			// The outage: held for a second while the writers keep trying.
			time.Sleep(time.Second)
			if err := cluster.Start(); err != nil {
				t.Fatalf("start postgres: %v", err)
			}
			started := time.Now()
			readyIn := chaosWaitReady(t, g.base, 20*time.Second)
			t.Logf("postgres stopped (%s) in %v, down %v; gateway ready %v after postgres accepted connections",
				mode, stopped.Sub(stopAt).Round(time.Millisecond), started.Sub(stopped).Round(time.Millisecond), readyIn.Round(time.Millisecond))
			if s, ok := ready.firstNotOK(stopAt, started); !ok {
				t.Errorf("/readyz stayed 200 while postgres was down: %s", ready.reasons(stopAt, started))
			} else {
				t.Logf("/readyz not ready %v after the stop began: %d %q; while down: %s",
					s.at.Sub(stopAt).Round(time.Millisecond), s.code, s.reason, ready.reasons(stopAt, started))
			}
			failedDuring := -failedBefore
			for _, w := range r.writers {
				failedDuring += w.failedCount()
			}
			if failedDuring == 0 {
				t.Errorf("no write failed while postgres was down: the outage did not happen")
			}
			waitAcked(t, r.writers, 100, 20*time.Second)
			r.finish(t)
		})
	}
}

// mustHost returns host:port of a postgres URL.
func mustHost(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// TestChaosNetwork: the network between the gateway and PostgreSQL (its
// LISTEN connection and its pool both go through the proxy) fails while
// writers, which reach the database directly, go on committing:
//   - cut: for 5 s every connection is closed and new ones are refused;
//   - blackhole: for 5 s nothing passes either way and no connection is
//     closed (a silent partition); at the heal the connections that lived
//     through it are reset;
//   - slow: 200 ms ± 50 ms each way for 4 s.
//
// After each, every client holds exactly the log and /readyz is 200.
func TestChaosNetwork(t *testing.T) {
	const hold = 5 * time.Second
	setup := func(t *testing.T) (*chaosRig, *chaosProxy, *gw, *readyWatch) {
		db := newTestDB(t)
		proxy := newChaosProxy(t, mustHost(t, db.url))
		g := startGateway(t, db, "DATABASE_URL="+proxy.url(t, db.url), chaosPoll)
		r := &chaosRig{db: db}
		r.startClients(t, g.base, "")
		r.startWriters(t, 2, 5*time.Millisecond)
		waitAcked(t, r.writers, 100, 20*time.Second)
		return r, proxy, g, watchReady(t, g.base)
	}
	noWriteFailed := func(t *testing.T, r *chaosRig) {
		t.Helper()
		for _, w := range r.writers {
			if n := w.failedCount(); n > 0 {
				t.Errorf("writer %s: %d writes failed during a fault between gateway and database", w.name, n)
			}
		}
	}

	t.Run("cut", func(t *testing.T) {
		r, proxy, g, ready := setup(t)
		cutAt := time.Now()
		proxy.p.Stop() // closes every connection through it, refuses new ones
		time.Sleep(hold)
		healAt := time.Now()
		if err := proxy.p.Start(); err != nil {
			t.Fatalf("restart proxy: %v", err)
		}
		readyIn := chaosWaitReady(t, g.base, 20*time.Second)
		if s, ok := ready.firstNotOK(cutAt, healAt); !ok {
			t.Errorf("/readyz stayed 200 during a 5s cut: %s", ready.reasons(cutAt, healAt))
		} else {
			t.Logf("cut: /readyz %d %q %v after the cut; during it: %s", s.code, s.reason,
				s.at.Sub(cutAt).Round(time.Millisecond), ready.reasons(cutAt, healAt))
			if s.reason == "" {
				t.Errorf("/readyz answered %d during the cut without a reason", s.code)
			}
		}
		t.Logf("cut: ready again %v after the network healed", readyIn.Round(time.Millisecond))
		waitAcked(t, r.writers, 100, 20*time.Second)
		noWriteFailed(t, r)
		r.finish(t)
	})

	t.Run("blackhole", func(t *testing.T) {
		r, proxy, g, ready := setup(t)
		before := r.clients[0].count()
		cutAt := time.Now()
		// Every byte either way is dropped and no connection is closed: a
		// silent partition. Removing the toxic closes the connections that
		// lived through it, as a firewall or NAT that lost their state
		// would reset them once the network heals.
		heal := proxy.toxic(t, "timeout", map[string]any{"timeout": 0})
		time.Sleep(hold)
		during := r.clients[0].count() - before
		healAt := time.Now()
		heal()
		readyIn := chaosWaitReady(t, g.base, 20*time.Second)
		// Nothing closes: only the follower's LISTEN heartbeat, which hears
		// nothing back, can tell that the connections are dead.
		if s, ok := ready.firstNotOK(cutAt, healAt); !ok {
			t.Errorf("/readyz stayed 200 for the whole %v silent partition (%s) while clients received %d events: the dead connections went unnoticed",
				hold, ready.reasons(cutAt, healAt), during)
		} else {
			t.Logf("blackhole: /readyz %d %q %v after the cut; during it: %s; clients received %d events during it", s.code, s.reason,
				s.at.Sub(cutAt).Round(time.Millisecond), ready.reasons(cutAt, healAt), during)
			if s.reason == "" {
				t.Errorf("/readyz answered %d during the partition without a reason", s.code)
			}
		}
		t.Logf("blackhole: ready %v after the heal", readyIn.Round(time.Millisecond))
		// After the heal, the backlog arrives: measure how long that takes.
		ackedAtHeal := 0
		for _, w := range r.writers {
			ackedAtHeal += w.ackedCount()
		}
		start := time.Now()
		for _, c := range r.clients {
			if !faultPoll(20*time.Second, func() bool { return c.countOf("w0", "w1") >= ackedAtHeal }) {
				t.Errorf("client %s: %d of %d events 20s after the heal", c.name, c.countOf("w0", "w1"), ackedAtHeal)
			}
		}
		t.Logf("blackhole: clients caught up %v after the heal", time.Since(start).Round(time.Millisecond))
		waitAcked(t, r.writers, 100, 20*time.Second)
		noWriteFailed(t, r)
		r.finish(t)
	})

	t.Run("slow", func(t *testing.T) {
		r, proxy, g, ready := setup(t)
		slowAt := time.Now()
		heal := proxy.toxic(t, "latency", map[string]any{"latency": 200, "jitter": 50})
		time.Sleep(4 * time.Second)
		healAt := time.Now()
		heal()
		chaosWaitReady(t, g.base, 20*time.Second)
		if s, ok := ready.firstNotOK(slowAt, healAt); ok {
			t.Errorf("/readyz %d %q on a slow but working network: %s", s.code, s.reason, ready.reasons(slowAt, healAt))
		}
		waitAcked(t, r.writers, 100, 20*time.Second)
		noWriteFailed(t, r)
		r.finish(t)
		// Writes acknowledged in the second half of the slow period: by then
		// the gateway's reads and notifications all pay the latency.
		mid := slowAt.Add(2 * time.Second)
		inSlow := func(w chaosWrite) bool { return w.ack.After(mid) && w.ack.Before(healAt) }
		before := func(w chaosWrite) bool { return w.ack.Before(slowAt) }
		for _, c := range r.clients {
			t.Logf("slow: client %s: commit to delivery before %s; with 200±50ms each way %s",
				c.name, latencySummary(latencies(c, r.writers, before)), latencySummary(latencies(c, r.writers, inSlow)))
		}
	})
}

// TestChaosReplicaKilled: two gateways run as real processes on one
// database. Clients on replica B stay connected while A is SIGKILLed,
// writes go on, and A is started again. B's clients miss nothing and never
// reconnect; A's client reconnects by itself once A is back and gets
// exactly the rest; a client of B that moves to the restarted A with its
// last id from B gets exactly the rest too.
func TestChaosReplicaKilled(t *testing.T) {
	bin := buildGateway(t)
	db := newTestDB(t)
	a, b := newChaosProc(t, bin, db), newChaosProc(t, bin, db)
	a.start(t)
	b.start(t)

	r := &chaosRig{db: db}
	r.startClients(t, b.base(), "@B")
	onA := startClient(t, "websocket@A", a.base(), false)
	mover := startClient(t, "websocket@B→A", b.base(), false)
	r.clients = append(r.clients, onA, mover)
	r.startWriters(t, 2, 5*time.Millisecond)
	waitAcked(t, r.writers, 100, 20*time.Second)
	readyB := watchReady(t, b.base())

	killAt := time.Now()
	a.kill(t)
	waitAcked(t, r.writers, 300, 20*time.Second)
	restartAt := time.Now()
	readyIn := a.start(t)
	t.Logf("A killed; restarted %v later, ready %v after its start", restartAt.Sub(killAt).Round(time.Millisecond), readyIn.Round(time.Millisecond))
	if !faultPoll(10*time.Second, func() bool { _, n, _, _ := onA.snapshot(); return n >= 2 }) {
		t.Fatalf("the client of A did not reconnect within 10s of A being ready")
	}
	waitAcked(t, r.writers, 100, 20*time.Second)
	mover.moveTo(a.base())
	if !faultPoll(10*time.Second, func() bool { _, n, _, _ := mover.snapshot(); return n >= 2 }) {
		t.Fatalf("the moving client did not connect to A within 10s")
	}
	waitAcked(t, r.writers, 100, 20*time.Second)
	for _, w := range r.writers {
		if n := w.failedCount(); n > 0 {
			t.Errorf("writer %s: %d writes failed although only a gateway died", w.name, n)
		}
	}
	end := time.Now()
	r.finish(t)
	if s, ok := readyB.firstNotOK(killAt, end); ok {
		t.Errorf("replica B not ready (%d %q) while A was killed and restarted", s.code, s.reason)
	}
	for _, c := range r.clients[:2] {
		if _, n, _, _ := c.snapshot(); n != 1 {
			t.Errorf("client %s of B connected %d times, want once: B's clients must not notice A's death", c.name, n)
		}
	}
	chaosWaitReady(t, a.base(), 10*time.Second)
}

// TestChaosLongTransaction: a write transaction stays open, holding an
// inserted row, while other writers commit hundreds of transactions. Those
// are delivered while it is open, about as fast as without it (the design
// claim: an open transaction costs others nothing until its own commit); it
// is delivered once it commits, in commit order.
func TestChaosLongTransaction(t *testing.T) {
	ctx := context.Background()
	db := newTestDB(t)
	proxy := newChaosProxy(t, mustHost(t, db.url))
	g := startGateway(t, db, "DATABASE_URL="+proxy.url(t, db.url), chaosPoll)
	r := &chaosRig{db: db}
	r.startClients(t, g.base, "")
	r.startWriters(t, 2, 5*time.Millisecond)
	waitAcked(t, r.writers, 200, 20*time.Second)

	longConn, err := r.writers[0].pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer longConn.Release()
	tx, err := longConn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO facts (amount, fact_date, description) VALUES (0, '2026-01-16', 'long')`); err != nil {
		t.Fatalf("insert in the long transaction: %v", err)
	}
	openAt := time.Now()
	// It stays open while the others commit 400 transactions, and all of
	// them reach every client meanwhile.
	waitAcked(t, r.writers, 400, 30*time.Second)
	acked := 0
	for _, w := range r.writers {
		acked += w.ackedCount()
	}
	for _, c := range r.clients {
		if !faultPoll(10*time.Second, func() bool { return c.countOf("w0", "w1") >= acked }) {
			t.Fatalf("client %s: %d of the %d rows committed around the open transaction were delivered while it stayed open",
				c.name, c.countOf("w0", "w1"), acked)
		}
		if n := c.countOf("long"); n != 0 {
			t.Fatalf("client %s received the uncommitted row", c.name)
		}
	}
	commitAt := time.Now()
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit the long transaction: %v", err)
	}
	committed := time.Now()
	t.Logf("the long transaction stayed open %v", commitAt.Sub(openAt).Round(time.Millisecond))
	for _, c := range r.clients {
		if !faultPoll(10*time.Second, func() bool { return c.countOf("long") == 1 }) {
			t.Fatalf("client %s: the long transaction's row not delivered within 10s of its commit", c.name)
		}
	}
	waitAcked(t, r.writers, 100, 20*time.Second)
	log := r.finish(t)

	// Commit order: the long row comes after every write acknowledged
	// before its COMMIT began, and before every write started after its
	// COMMIT returned.
	pos := map[string]int{}
	for i, e := range log {
		pos[fmt.Sprintf("%s/%d", e.Writer, e.N)] = i
	}
	long := pos["long/0"]
	for _, w := range r.writers {
		for n, wr := range w.writes() {
			p := pos[fmt.Sprintf("%s/%d", w.name, n)]
			if wr.ack.Before(commitAt) && p > long {
				t.Errorf("%s/%d, acknowledged before the long COMMIT began, is after it in the log", w.name, n)
			}
			if wr.start.After(committed) && p < long {
				t.Errorf("%s/%d, started after the long COMMIT returned, is before it in the log", w.name, n)
			}
		}
	}

	for _, c := range r.clients {
		before := latencies(c, r.writers, func(w chaosWrite) bool { return w.ack.Before(openAt) })
		open := latencies(c, r.writers, func(w chaosWrite) bool { return w.ack.After(openAt) && w.ack.Before(commitAt) })
		t.Logf("client %s: commit to delivery before the long transaction %s; while it was open %s",
			c.name, latencySummary(before), latencySummary(open))
		// Generous: the doorbell delivers in milliseconds, and the poll
		// alone would within 200 ms.
		if m := quantile(open, 0.5); m > 500*time.Millisecond {
			t.Errorf("client %s: median delivery %v while the long transaction was open", c.name, m)
		}
	}
	t.Logf("writers: commit time before %s; while open %s",
		latencySummary(commitLatencies(r.writers, time.Time{}, openAt)), latencySummary(commitLatencies(r.writers, openAt, commitAt)))
	chaosWaitReady(t, g.base, 10*time.Second)
}

// TestChaosGatewayPaused: the gateway process is stopped with SIGSTOP for
// 3 s while writers commit. Application writes neither fail nor slow down
// (nothing of theirs waits for the gateway); after SIGCONT the gateway
// catches up, is ready, and every client holds exactly the log.
func TestChaosGatewayPaused(t *testing.T) {
	bin := buildGateway(t)
	db := newTestDB(t)
	p := newChaosProc(t, bin, db)
	p.start(t)
	r := &chaosRig{db: db}
	r.startClients(t, p.base(), "")
	r.startWriters(t, 2, 5*time.Millisecond)
	waitAcked(t, r.writers, 200, 20*time.Second)
	ready := watchReady(t, p.base())

	stopAt := time.Now()
	p.signal(t, syscall.SIGSTOP)
	time.Sleep(3 * time.Second)
	contAt := time.Now()
	acked := 0
	for _, w := range r.writers {
		acked += w.ackedCount()
	}
	p.signal(t, syscall.SIGCONT)
	readyIn := chaosWaitReady(t, p.base(), 20*time.Second)
	for _, c := range r.clients {
		if !faultPoll(20*time.Second, func() bool { return c.countOf("w0", "w1") >= acked }) {
			t.Errorf("client %s: %d of %d rows 20s after SIGCONT", c.name, c.countOf("w0", "w1"), acked)
		}
	}
	caughtUp := time.Since(contAt)
	t.Logf("paused %v; after SIGCONT /readyz 200 in %v, clients had every row committed during the pause in %v",
		contAt.Sub(stopAt).Round(time.Millisecond), readyIn.Round(time.Millisecond), caughtUp.Round(time.Millisecond))
	t.Logf("/readyz while paused: %s", ready.reasons(stopAt.Add(100*time.Millisecond), contAt))

	before := commitLatencies(r.writers, time.Time{}, stopAt)
	paused := commitLatencies(r.writers, stopAt, contAt)
	t.Logf("writers: commit time before the pause %s; during it %s", latencySummary(before), latencySummary(paused))
	if len(paused) < 10 {
		t.Errorf("only %d commits during the 3s pause: the writers did not write through it", len(paused))
	}
	// Generous, for a busy machine: a commit that waited for the gateway
	// would wait for the whole pause.
	if m := quantile(paused, 1); m > 2*time.Second {
		t.Errorf("a commit took %v while the gateway was paused", m)
	}
	for _, w := range r.writers {
		if n := w.failedCount(); n > 0 {
			t.Errorf("writer %s: %d writes failed while the gateway was paused", w.name, n)
		}
	}
	waitAcked(t, r.writers, 100, 20*time.Second)
	r.finish(t)
}
