package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/gateway"
)

// Shutdown (in-process): every WebSocket gets 1001, every SSE stream ends
// cleanly, and serve returns promptly.
func TestShutdownClosesEveryClient(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	clients := []*wsClient{dialWS(t, g, ""), dialWS(t, g, ""), dialWS(t, g, "")}
	sse := openRawSSE(t, g.base+"/api/v1/budget/events", nil)

	// One event proves every client is attached to the hub, not just
	// upgraded, so the shutdown path under test is the hub's.
	db.insertFact(t, 1, "2026-01-02")
	for i, c := range clients {
		if f := c.next(t, 10*time.Second); f.Type != "budget_fact_created" {
			t.Fatalf("client %d: got %s, want budget_fact_created", i, f.Type)
		}
	}
	sse.waitLine(t, "data: ", 10*time.Second)

	start := time.Now()
	g.cancel()
	for i, c := range clients {
		ce := c.waitClose(t, 5*time.Second)
		if ce == nil || ce.Code != gateway.CloseGoingAway {
			t.Errorf("client %d: closed with %v, want code %d", i, ce, gateway.CloseGoingAway)
		}
	}
	if err := sse.waitEnd(t, 5*time.Second); err != nil {
		t.Errorf("SSE stream ended with %v, want a clean EOF", err)
	}
	select {
	case err := <-g.done:
		close(g.done) // tells the cleanup's stop that serve already returned
		if err != nil {
			t.Errorf("serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("serve did not return within 5s of cancel")
	}
	t.Logf("serve returned %v after cancel", time.Since(start).Round(time.Millisecond))
}

// A client whose socket is full (it stopped reading, and its queue is large
// enough that it is not dropped as slow) does not hold up shutdown: its
// close frame can only wait so long for the stuck write.
func TestShutdownNotHeldUpByStalledClient(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	// Write and shutdown timeouts far above what a clean shutdown takes: a
	// shutdown held up by the stuck write would take 30 s (or the 5 s the
	// hub waits for closes at most), one that is not takes about a second.
	g := startGateway(t, db, "GATEWAY_SEND_QUEUE=1000", "GATEWAY_WRITE_TIMEOUT=30s", "GATEWAY_SHUTDOWN_TIMEOUT=30s")
	healthy := dialWS(t, g, "")
	stalled := dialSlowWS(t, g)
	waitFor(t, 10*time.Second, "both clients to be attached", func() bool {
		_, body, _ := getJSON(g.base + "/readyz")
		return body["clients"] == 2.0
	})
	// 8 MB: about twice what the kernel buffers of a loopback connection
	// hold here, so the stalled client's writer is stuck mid-frame.
	const n = 40
	desc := strings.Repeat("0123456789abcdef", 200*1024/16)
	for i := range n {
		db.exec(t, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-07', $2)`, i, desc)
	}
	healthy.take(t, n)

	start := time.Now()
	g.cancel()
	if ce := healthy.waitClose(t, 10*time.Second); ce == nil || ce.Code != gateway.CloseGoingAway {
		t.Errorf("healthy client closed with %v, want %d", ce, gateway.CloseGoingAway)
	}
	// The shutdown is under way, held up by the stalled client's close for
	// a second: a new connection is refused at once, not served by a process
	// on its way out (the clients just closed reconnect right away).
	select {
	case <-g.done:
		t.Fatal("serve returned before the stalled client's close ended: the check below would prove nothing")
	default:
	}
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(g.base, "http://"), 5*time.Second); err == nil {
		c.Close()
		t.Error("a connection opened during the shutdown was accepted, want it refused")
	}
	select {
	case err := <-g.done:
		close(g.done)
		if err != nil {
			t.Errorf("serve returned %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("serve did not return within 40s of cancel")
	}
	took := time.Since(start)
	t.Logf("serve returned %v after cancel", took.Round(time.Millisecond))
	// The stalled client gets a second; the hub stops waiting for its
	// closes after 5 s, so a shutdown that needed that much was held up too.
	if took > 4*time.Second {
		t.Errorf("shutdown took %v with a stalled client, want about the second it is given", took.Round(time.Millisecond))
	}
	// The scenario held: the stalled client's socket was full, so it can
	// read only part of what was committed.
	if err := stalled.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		if _, _, err := stalled.ReadMessage(); err != nil {
			break
		}
		got++
	}
	if got >= n {
		t.Fatalf("the stalled client could read all %d events: its socket never filled, so this test proved nothing", n)
	}
}

// The real binary: SIGTERM closes WebSockets with 1001 and exits 0; migrate
// is idempotent; uninstall leaves the app's tables alone and a second
// migrate brings the events back.
func TestBinary(t *testing.T) {
	t.Parallel()
	bin := buildGateway(t)

	t.Run("SIGTERM", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t)
		addr := freeAddr(t)
		var stderr lockedBuffer
		cmd := exec.CommandContext(t.Context(), bin, "serve")
		cmd.Env = []string{"DATABASE_URL=" + db.url, "GATEWAY_ADDR=" + addr, "GATEWAY_LOG_FORMAT=text", "GATEWAY_INSECURE_NO_AUTH=true"}
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start gateway: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			if t.Failed() {
				t.Logf("gateway stderr:\n%s", stderr.String())
			}
		}()

		g := &gw{base: "http://" + addr}
		waitFor(t, 20*time.Second, "binary's /readyz to answer 200", func() bool {
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("gateway exited before it was ready: %v", err)
			default:
			}
			code, _, _ := getJSON(g.base + "/readyz")
			return code == http.StatusOK
		})
		c := dialWS(t, g, "")
		db.insertFact(t, 5, "2026-01-03")
		if f := c.next(t, 10*time.Second); f.Type != "budget_fact_created" || f.field(t, "amount") != 5.0 {
			t.Fatalf("got %s %s, want the fact", f.Type, f.Data)
		}

		start := time.Now()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
		if ce := c.waitClose(t, 5*time.Second); ce == nil || ce.Code != gateway.CloseGoingAway {
			t.Errorf("closed with %v, want code %d", ce, gateway.CloseGoingAway)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("gateway exited with %v, want status 0", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("gateway still running 10s after SIGTERM")
		}
		t.Logf("exited with status 0 %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	})

	t.Run("migrate", func(t *testing.T) {
		t.Parallel()
		db := newBareDB(t, schema)
		db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES (1, '2026-01-01'), (2, '2026-02-01')`)
		db.exec(t, `INSERT INTO articles (name) VALUES ('before')`)
		migrate := func(args ...string) string {
			t.Helper()
			cmd := exec.CommandContext(t.Context(), bin, append([]string{"migrate"}, args...)...)
			cmd.Env = []string{"DATABASE_URL=" + db.url}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("gateway migrate %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, out, stderr.Bytes())
			}
			return string(out)
		}
		const tracking = "capture: by triggers\n" +
			"tracking articles as article_created, article_updated, article_deleted\n" +
			"tracking facts as budget_fact_created, budget_fact_updated, budget_fact_deleted\n"
		// Capture triggers on facts, its 3 partitions and articles, plus rtgw_stamp.
		const triggers = 3*(1+3+1) + 1
		countTriggers := func() int64 {
			return db.queryInt(t, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'rtgw\_%'`)
		}
		for i := range 2 {
			if out := migrate(); out != tracking {
				t.Fatalf("migrate run %d printed:\n%s\nwant:\n%s", i+1, out, tracking)
			}
			if n := countTriggers(); n != triggers {
				t.Fatalf("after migrate run %d: %d rtgw_ triggers, want %d", i+1, n, triggers)
			}
		}
		db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES (3, '2026-03-01')`)
		db.exec(t, `UPDATE articles SET name = 'tracked'`)
		if n := db.queryInt(t, `SELECT count(*) FROM rtgw.event`); n != 2 {
			t.Fatalf("event log holds %d events after two tracked writes, want 2", n)
		}

		for i := range 2 { // uninstall is idempotent too
			if out := migrate("--uninstall"); !strings.HasPrefix(out, "uninstalled") {
				t.Fatalf("migrate --uninstall run %d printed %q", i+1, out)
			}
		}
		if n := db.queryInt(t, `SELECT count(*) FROM pg_namespace WHERE nspname = 'rtgw'`); n != 0 {
			t.Fatalf("schema rtgw still there after uninstall")
		}
		if n := countTriggers(); n != 0 {
			t.Fatalf("%d rtgw_ triggers left after uninstall", n)
		}
		if n := db.queryInt(t, `SELECT count(*) FROM facts`); n != 3 {
			t.Fatalf("facts has %d rows after uninstall, want 3", n)
		}
		if n := db.queryInt(t, `SELECT count(*) FROM articles WHERE name = 'tracked'`); n != 1 {
			t.Fatalf("articles lost its row after uninstall")
		}
		// The app writes as before, through the parent and to a partition.
		db.exec(t, `INSERT INTO facts (amount, fact_date) VALUES (4, '2026-01-20')`)
		db.exec(t, `INSERT INTO facts_2026_02 (amount, fact_date) VALUES (5, '2026-02-20')`)
		db.exec(t, `UPDATE facts SET fact_date = '2026-03-05' WHERE amount = 4`)
		db.exec(t, `DELETE FROM articles`)
		db.exec(t, `INSERT INTO articles (name) VALUES ('after')`)
		if n := db.queryInt(t, `SELECT count(*) FROM facts`); n != 5 {
			t.Fatalf("facts has %d rows, want 5", n)
		}

		// Installing again brings the events back.
		if out := migrate(); out != tracking {
			t.Fatalf("migrate after uninstall printed:\n%s\nwant:\n%s", out, tracking)
		}
		if n := countTriggers(); n != triggers {
			t.Fatalf("after re-install: %d rtgw_ triggers, want %d", n, triggers)
		}
		g := startGateway(t, db)
		c := dialWS(t, g, "")
		db.insertFact(t, 42, "2026-02-14")
		if f := c.next(t, 10*time.Second); f.Type != "budget_fact_created" || f.field(t, "amount") != 42.0 {
			t.Fatalf("after re-install got %s %s, want the new fact", f.Type, f.Data)
		}
	})
}

// A client that stops reading is disconnected with 4008 once its queue
// overflows, after a gap-free prefix of the stream, and resumes exactly;
// a healthy client beside it misses nothing.
func TestSlowClientIsDisconnectedWithoutGap(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	// The slow client must start reading before a blocked write times out;
	// a generous write timeout keeps that true on a loaded machine.
	g := startGateway(t, db, "GATEWAY_SEND_QUEUE=4", "GATEWAY_REPLAY_EVENTS=16", "GATEWAY_WRITE_TIMEOUT=30s")
	healthy := dialWS(t, g, "")
	slow := dialSlowWS(t, g)
	clients := func() any { _, body, _ := getJSON(g.base + "/readyz"); return body["clients"] }
	waitFor(t, 10*time.Second, "both clients to be attached", func() bool { return clients() == 2.0 })

	// A small first event lands in the slow client's socket buffer, so its
	// prefix is never empty; big ones then fill the kernel buffers on both
	// sides, block melody's writer and use up the client's 4 frames of
	// credit, so it lags; once it is more than the 16-event window behind,
	// the hub disconnects it. How many events that takes depends on the
	// kernel's buffer sizes, so the test commits until the hub has dropped
	// the slow client, then a few more for the resume to fetch. Each commit
	// waits for the healthy client, which tells when to look.
	db.exec(t, `INSERT INTO articles (name) VALUES ('start')`)
	all := []frame{healthy.next(t, 10*time.Second)}
	if all[0].Type != "article_created" {
		t.Fatalf("healthy client: first frame %s, want article_created", all[0].Type)
	}
	desc := strings.Repeat("0123456789abcdef", 200*1024/16)
	const maxBig, after = 200, 5
	kickedAt := 0
	for i := 0; kickedAt == 0 || i < kickedAt+after; i++ {
		if i == maxBig {
			t.Fatalf("the slow client was not disconnected after %d events of 200 KB", maxBig)
		}
		db.exec(t, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-07', $2)`, i, desc)
		f := healthy.next(t, 10*time.Second)
		if f.Type != "budget_fact_created" || f.field(t, "amount") != float64(i) {
			t.Fatalf("healthy client: frame %d is %s amount %v, want budget_fact_created amount %d", i+1, f.Type, f.field(t, "amount"), i)
		}
		all = append(all, f)
		if kickedAt == 0 {
			// The hub drops a client from its set when it kicks it.
			if clients() == 1.0 {
				kickedAt = i + 1
			}
		}
	}
	total := len(all)
	t.Logf("slow client dropped after %d big events; %d events in all", kickedAt, total)

	// The client stays stalled a while longer, as a slow one does: the close
	// frame must wait behind the frame stuck in its socket for as long as
	// the write timeout allows, not give up and cut that frame short. This
	// sleep is the scenario (a 2 s stall, well within the 30 s timeout),
	// not a wait for something to happen.
	time.Sleep(2 * time.Second)

	// Now read what the slow client was sent.
	if err := slow.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var got []frame
	var readErr error
	for {
		_, msg, err := slow.ReadMessage()
		if err != nil {
			readErr = err
			break
		}
		var f frame
		if err := json.Unmarshal(msg, &f); err != nil {
			t.Fatalf("slow client: frame %d is not JSON: %v", len(got), err)
		}
		got = append(got, f)
	}
	k := len(got)
	t.Logf("slow client got %d of %d events before the close", k, total)
	if k == 0 || k >= total {
		t.Fatalf("slow client got %d frames, want a proper prefix of %d", k, total)
	}
	if !slices.Equal(ids(got), ids(all[:k])) {
		t.Fatalf("slow client's frames are not a prefix of the stream:\n got %v\nwant %v", ids(got), ids(all[:k]))
	}
	var ce *websocket.CloseError
	if !errors.As(readErr, &ce) || ce.Code != gateway.CloseSlow {
		t.Fatalf("slow client: stream ended with %v, want a close frame with code %d", readErr, gateway.CloseSlow)
	}

	// It resumes from its last id and gets exactly the rest.
	again := dialWS(t, g, "last_event_id="+got[k-1].ID)
	rest := again.take(t, total-k)
	if !slices.Equal(ids(rest), ids(all[k:])) {
		t.Fatalf("resumed client got\n%v\nwant\n%v", ids(rest), ids(all[k:]))
	}
	db.exec(t, `INSERT INTO articles (name) VALUES ('marker')`)
	for name, c := range map[string]*wsClient{"resumed": again, "healthy": healthy} {
		if f := c.next(t, 10*time.Second); f.Type != "article_created" || f.field(t, "name") != "marker" {
			t.Fatalf("%s client: after the stream got %s %s, want the marker", name, f.Type, f.Data)
		}
	}
}

// ?types= filters the stream: interleaved commits of another type never
// reach the client, as the marker that follows them shows.
func TestSSETypesFilter(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	sse := dialSSE(t, g, "types=article_created", nil)
	all := dialSSE(t, g, "", nil)

	var want []string
	for i := range 5 {
		db.insertFact(t, i, "2026-01-11")
		db.exec(t, `INSERT INTO articles (name) VALUES ($1)`, fmt.Sprintf("a%d", i))
		db.exec(t, `UPDATE articles SET type = 'income' WHERE name = $1`, fmt.Sprintf("a%d", i))
		want = append(want, fmt.Sprintf("a%d", i))
	}
	want = append(want, "marker")
	db.exec(t, `INSERT INTO articles (name) VALUES ('marker')`)

	for i, ev := range sse.take(t, len(want)) {
		var f frame
		if err := json.Unmarshal([]byte(ev.Data), &f); err != nil {
			t.Fatalf("SSE data %q: %v", ev.Data, err)
		}
		if ev.Event != "article_created" || f.Type != "article_created" || f.field(t, "name") != want[i] {
			t.Fatalf("filtered event %d: %s %s, want article_created %s", i, ev.Event, ev.Data, want[i])
		}
	}
	// The unfiltered stream did carry the other types.
	if evs := all.take(t, 3*5+1); evs[0].Event != "budget_fact_created" || evs[2].Event != "article_updated" {
		t.Fatalf("unfiltered stream starts %s, %s, %s", evs[0].Event, evs[1].Event, evs[2].Event)
	}
}

// The SSE wire format: headers, retry, heartbeat comments while idle, and
// an id line equal to the JSON id.
func TestSSEWireFormat(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_SSE_HEARTBEAT=50ms")
	s := openRawSSE(t, g.base+"/api/v1/budget/events", nil)

	for name, want := range map[string]string{
		"Content-Type":      "text/event-stream",
		"Cache-Control":     "no-cache",
		"X-Accel-Buffering": "no",
	} {
		if got := s.resp.Header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	if l := s.line(t, 5*time.Second); l != "retry: 1000" {
		t.Fatalf("first line %q, want retry: 1000", l)
	}
	// Idle: heartbeats keep coming.
	for range 3 {
		s.waitLine(t, ": heartbeat", 5*time.Second)
	}

	db.insertFact(t, 9, "2026-03-09")
	idLine := s.waitLine(t, "id: ", 10*time.Second)
	event, data := s.line(t, 5*time.Second), s.line(t, 5*time.Second)
	if end := s.line(t, 5*time.Second); end != "" {
		t.Fatalf("event block not ended by a blank line: %q", end)
	}
	var f frame
	if err := json.Unmarshal([]byte(strings.TrimPrefix(data, "data: ")), &f); err != nil || !strings.HasPrefix(data, "data: ") {
		t.Fatalf("data line %q: %v", data, err)
	}
	if id := strings.TrimPrefix(idLine, "id: "); id != f.ID || id == "" {
		t.Fatalf("id line %q, JSON id %q", idLine, f.ID)
	}
	if event != "event: budget_fact_created" || f.Type != "budget_fact_created" {
		t.Fatalf("event line %q, JSON type %q", event, f.Type)
	}
	// And after the event, still heartbeats.
	s.waitLine(t, ": heartbeat", 5*time.Second)
}

// SSE resume: ?last_event_id= when there is no header; the Last-Event-ID
// header (EventSource's reconnect) wins over the query.
func TestSSEResume(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	ws := dialWS(t, g, "")
	for i := range 5 {
		db.insertFact(t, i, "2026-02-02")
	}
	evs := ws.take(t, 5)

	header := func(id string) http.Header { return http.Header{"Last-Event-ID": {id}} }
	cases := []struct {
		name   string
		query  string
		header http.Header
		want   []frame
	}{
		{"query", "last_event_id=" + evs[1].ID, nil, evs[2:]},
		{"header", "", header(evs[2].ID), evs[3:]},
		{"header wins", "last_event_id=" + evs[0].ID, header(evs[3].ID), evs[4:]},
	}
	streams := make([]*sseClient, len(cases))
	for i, c := range cases {
		streams[i] = dialSSE(t, g, c.query, c.header)
	}
	db.exec(t, `INSERT INTO articles (name) VALUES ('marker')`)
	for i, c := range cases {
		got := streams[i].take(t, len(c.want)+1)
		var gotIDs []string
		for _, ev := range got {
			gotIDs = append(gotIDs, ev.ID)
		}
		if !slices.Equal(gotIDs[:len(c.want)], ids(c.want)) || got[len(c.want)].Event != "article_created" {
			t.Errorf("%s: got %v (last %s), want %v then the marker", c.name, gotIDs, got[len(c.want)].Event, ids(c.want))
		}
	}
}

// /healthz always answers; /readyz and the transports answer 503 until the
// event log is installed, and the gateway becomes ready once it is, without
// a restart.
func TestReadinessWaitsForMigrate(t *testing.T) {
	t.Parallel()
	db := newBareDB(t, schema)
	g := startGatewayNoWait(t, db)

	code, body, err := getJSON(g.base + "/healthz")
	if err != nil || code != http.StatusOK || body["status"] != "ok" {
		t.Fatalf("/healthz: %d %v %v", code, body, err)
	}
	// Not ready, and stays so while serve retries.
	deadline := time.Now().Add(500 * time.Millisecond)
	for n := 0; n < 3 || time.Now().Before(deadline); n++ {
		code, body, err := getJSON(g.base + "/readyz")
		if err != nil || code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz before migrate: %d %v %v, want 503", code, body, err)
		}
		if r, _ := body["reason"].(string); r == "" {
			t.Fatalf("/readyz 503 without a reason: %v", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, resp, err := websocket.DefaultDialer.Dial(g.wsURL(""), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("WebSocket before migrate: %v, response %v; want a 503", err, resp)
	}
	resp.Body.Close()
	if resp, err := http.Get(g.base + "/api/v1/budget/events"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("SSE before migrate: %v %v, want 503", resp, err)
	} else {
		resp.Body.Close()
	}

	start := time.Now()
	var out strings.Builder
	if err := run(t.Context(), []string{"migrate"}, db.environ(), &out, io.Discard); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	waitFor(t, 20*time.Second, "/readyz to answer 200 after migrate", func() bool {
		code, _, _ := getJSON(g.base + "/readyz")
		return code == http.StatusOK
	})
	t.Logf("ready %v after migrate", time.Since(start).Round(time.Millisecond))
	code, body, _ = getJSON(g.base + "/readyz")
	if code != http.StatusOK || body["status"] != "ready" {
		t.Fatalf("/readyz: %d %v", code, body)
	}
	c := dialWS(t, g, "")
	db.insertFact(t, 3, "2026-01-30")
	if f := c.next(t, 10*time.Second); f.Type != "budget_fact_created" {
		t.Fatalf("got %s, want budget_fact_created", f.Type)
	}
}

// --- helpers ---

// startGatewayNoWait is startGateway without waiting for readiness.
func startGatewayNoWait(t *testing.T, db *testDB, extra ...string) *gw {
	t.Helper()
	cfg, err := config.Load(db.environ(extra...))
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gw{base: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- serve(ctx, cfg, testLogger(), ln) }()
	t.Cleanup(func() { g.stop(t) })
	return g
}

// buildGateway builds the command into a temporary directory.
func buildGateway(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gateway")
	start := time.Now()
	out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built the gateway in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// getJSON GETs url and decodes its JSON body.
func getJSON(url string) (int, map[string]any, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var body map[string]any
	err = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body, err
}

// dialSlowWS opens a WebSocket that nobody reads until the test says so.
// Its kernel receive buffer is left alone: one smaller than the loopback
// MSS makes the socket crawl (window updates wait for delayed ACKs) once
// the test does read.
func dialSlowWS(t *testing.T, g *gw) *websocket.Conn {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(g.wsURL(""), nil)
	if err != nil {
		t.Fatalf("dial slow websocket: %v (response %v)", err, resp)
	}
	t.Cleanup(func() { conn.Close() })
	if _, msg, err := conn.ReadMessage(); err != nil || !strings.Contains(string(msg), `"type":"connected"`) {
		t.Fatalf("slow websocket: first frame %s (%v), want connected", msg, err)
	}
	return conn
}

// rawSSE reads an SSE response line by line, to check the exact wire
// format and how the stream ends.
type rawSSE struct {
	resp  *http.Response
	lines chan string
	end   chan error // nil for a clean EOF
}

func openRawSSE(t *testing.T, url string, header http.Header) *rawSSE {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	s := &rawSSE{resp: resp, lines: make(chan string, 100000), end: make(chan error, 1)}
	go func() {
		br := bufio.NewReader(resp.Body)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				if errors.Is(err, io.EOF) && l == "" {
					err = nil
				}
				s.end <- err
				close(s.lines)
				return
			}
			s.lines <- strings.TrimSuffix(l, "\n")
		}
	}()
	return s
}

// line returns the next line.
func (s *rawSSE) line(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			t.Fatalf("SSE stream ended")
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("no SSE line within %v", timeout)
	}
	return ""
}

// waitLine skips lines until one starts with prefix, and returns it.
func (s *rawSSE) waitLine(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if l := s.line(t, time.Until(deadline)); strings.HasPrefix(l, prefix) {
			return l
		}
	}
}

// waitEnd drains the stream and returns how it ended.
func (s *rawSSE) waitEnd(t testing.TB, timeout time.Duration) error {
	t.Helper()
	timer := time.After(timeout)
	for {
		select {
		case _, ok := <-s.lines:
			if !ok {
				return <-s.end
			}
		case <-timer:
			t.Fatalf("SSE stream still open after %v", timeout)
		}
	}
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// `gateway config` lists every setting with its default.
func TestConfigCommand(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	if err := run(t.Context(), []string{"config"}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, st := range config.Settings() {
		if !strings.Contains(out.String(), st.Var+"=") {
			t.Errorf("gateway config does not list %s", st.Var)
		}
	}
	if !strings.Contains(out.String(), "GATEWAY_ADDR=:8080\n") {
		t.Errorf("gateway config lacks the default of GATEWAY_ADDR:\n%s", out.String())
	}
}
