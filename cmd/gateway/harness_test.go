package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// schema is the shape of the app's tables that matters here: facts
// range-partitioned by month with a two-column primary key, and articles.
const schema = `
CREATE TABLE facts (
    id          serial,
    article_id  int NOT NULL DEFAULT 1,
    amount      bigint NOT NULL DEFAULT 0,
    fact_date   date NOT NULL,
    description text,
    record_type varchar(10) NOT NULL DEFAULT 'fact',
    PRIMARY KEY (id, fact_date)
) PARTITION BY RANGE (fact_date);
CREATE TABLE facts_2026_01 PARTITION OF facts FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE facts_2026_02 PARTITION OF facts FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE facts_2026_03 PARTITION OF facts FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
CREATE TABLE articles (
    id        serial PRIMARY KEY,
    name      varchar(255) NOT NULL,
    type      varchar(20) NOT NULL DEFAULT 'expense',
    is_active boolean NOT NULL DEFAULT true
);`

// testDB is a fresh database with the app's tables, migrated by the real
// `gateway migrate` command.
type testDB struct {
	url  string
	pool *pgxpool.Pool
}

func newTestDB(t *testing.T) *testDB {
	t.Helper()
	db := newBareDB(t, schema)
	db.migrate(t)
	return db
}

// newDecodingDB is newTestDB captured by logical decoding: migrated with
// GATEWAY_CAPTURE=decoding and a slot of its own, dropped before the
// database (and after the gateways the test starts later have stopped).
func newDecodingDB(t *testing.T) *testDB {
	t.Helper()
	db := newBareDB(t, schema)
	u, err := url.Parse(db.url)
	if err != nil {
		t.Fatal(err)
	}
	slot := "rtgw_" + strings.TrimPrefix(u.Path, "/")
	out := db.migrate(t, "GATEWAY_CAPTURE=decoding", "GATEWAY_CAPTURE_SLOT="+slot)
	if !strings.Contains(out, "by logical decoding") {
		t.Fatalf("migrate did not switch to decoding:\n%s", out)
	}
	t.Cleanup(func() {
		// The walsender leaves the slot just after its gateway stops.
		if err := notify.DropSlot(context.Background(), db.pool, slot); err != nil {
			t.Error(err)
		}
	})
	return db
}

// newBareDB is a fresh database with the given SQL run, not migrated.
func newBareDB(t *testing.T, sql ...string) *testDB {
	t.Helper()
	url := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	db := &testDB{url: url, pool: pool}
	for _, s := range sql {
		db.exec(t, s)
	}
	return db
}

// migrate runs the real `gateway migrate` with extra environment, and
// returns what it printed.
func (db *testDB) migrate(t *testing.T, extra ...string) string {
	t.Helper()
	var out strings.Builder
	if err := run(t.Context(), []string{"migrate"}, db.environ(extra...), &out, io.Discard); err != nil {
		t.Fatalf("gateway migrate: %v", err)
	}
	return out.String()
}

func (db *testDB) environ(extra ...string) []string {
	return append([]string{"DATABASE_URL=" + db.url, "GATEWAY_ADDR=127.0.0.1:0", "GATEWAY_LOG_LEVEL=debug",
		"GATEWAY_INSECURE_NO_AUTH=true", "GATEWAY_PING_INTERVAL=1h"}, extra...)
}

func (db *testDB) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := db.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

func (db *testDB) queryInt(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	return n
}

// insertFact commits one fact and returns its id.
func (db *testDB) insertFact(t testing.TB, amount int, date string) int64 {
	t.Helper()
	return db.queryInt(t, `INSERT INTO facts (amount, fact_date) VALUES ($1, $2) RETURNING id`, amount, date)
}

// gw is a gateway served in-process by the real serve function.
type gw struct {
	base   string // http://127.0.0.1:port
	cancel context.CancelFunc
	done   chan error
}

func startGateway(t *testing.T, db *testDB, extra ...string) *gw {
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
	g.waitReady(t)
	return g
}

// testLogger discards logs unless GATEWAY_TEST_LOG is set; the gateway's
// goroutines may outlive a test, so t.Log cannot be used.
func testLogger() *slog.Logger {
	if os.Getenv("GATEWAY_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitReady polls /readyz, the gateway's own readiness signal.
func (g *gw) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(g.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway at %s not ready after 20s (last error %v)", g.base, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop cancels serve and waits for it to return.
func (g *gw) stop(t testing.TB) {
	t.Helper()
	g.cancel()
	select {
	case err, ok := <-g.done:
		if ok && err != nil {
			t.Errorf("serve returned %v", err)
		}
		if ok {
			close(g.done)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("serve did not return 15s after cancel")
	}
}

func (g *gw) wsURL(query string) string {
	u := "ws" + strings.TrimPrefix(g.base, "http") + "/api/v1/budget/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

// frame is what the gateway sends: an event or a control message.
type frame struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Truncated bool            `json:"truncated"`
	Timestamp string          `json:"timestamp"`
}

func (f frame) field(t testing.TB, name string) any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(f.Data, &m); err != nil {
		t.Fatalf("frame %s data %s: %v", f.ID, f.Data, err)
	}
	return m[name]
}

// wsClient is a real WebSocket client reading on its own goroutine.
type wsClient struct {
	conn   *websocket.Conn
	id     string // connection_id from the connected frame
	user   int64  // user_id from the connected frame
	frames chan frame
	closed chan *websocket.CloseError // receives the close (or nil on other errors)
}

func dialWS(t testing.TB, g *gw, query string) *wsClient {
	t.Helper()
	return dialWSHeader(t, g, query, nil)
}

// dialWSHeader dials with extra request headers (an Origin, say).
func dialWSHeader(t testing.TB, g *gw, query string, h http.Header) *wsClient {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(g.wsURL(query), h)
	if err != nil {
		t.Fatalf("dial websocket: %v (response %v)", err, resp)
	}
	// The first frame is always connected, with the connection's id.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read the connected frame: %v", err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	var hello struct {
		Type string `json:"type"`
		Data struct {
			UserID       *int64 `json:"user_id"`
			ConnectionID string `json:"connection_id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(msg, &hello); err != nil || hello.Type != "connected" || hello.Data.UserID == nil || hello.Data.ConnectionID == "" {
		t.Fatalf("first frame %s, want connected with user_id and connection_id", msg)
	}
	c := &wsClient{conn: conn, id: hello.Data.ConnectionID, user: *hello.Data.UserID,
		frames: make(chan frame, 100000), closed: make(chan *websocket.CloseError, 1)}
	go func() {
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				errors.As(err, &ce)
				c.closed <- ce
				return
			}
			var f frame
			if err := json.Unmarshal(msg, &f); err != nil {
				f = frame{Type: "!bad json: " + string(msg)}
			}
			c.frames <- f
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return c
}

// next returns the next frame, failing the test after timeout.
func (c *wsClient) next(t testing.TB, timeout time.Duration) frame {
	t.Helper()
	select {
	case f := <-c.frames:
		return f
	case ce := <-c.closed:
		c.closed <- ce
		t.Fatalf("connection closed while waiting for a frame: %v", ce)
	case <-time.After(timeout):
		t.Fatalf("no frame within %s", timeout)
	}
	return frame{}
}

// take returns the next n frames.
func (c *wsClient) take(t testing.TB, n int) []frame {
	t.Helper()
	out := make([]frame, 0, n)
	for len(out) < n {
		out = append(out, c.next(t, 20*time.Second))
	}
	return out
}

// waitClose returns the close frame the server sent.
func (c *wsClient) waitClose(t testing.TB, timeout time.Duration) *websocket.CloseError {
	t.Helper()
	select {
	case ce := <-c.closed:
		return ce
	case <-time.After(timeout):
		t.Fatalf("connection not closed within %s", timeout)
	}
	return nil
}

// sseEvent is one message of an SSE stream.
type sseEvent struct {
	ID, Event, Data string
	Comment         string // a ":" line, such as the heartbeat
}

// sseClient reads an SSE stream over a real HTTP connection.
type sseClient struct {
	events chan sseEvent
	resp   *http.Response
}

func dialSSE(t testing.TB, g *gw, query string, header http.Header) *sseClient {
	t.Helper()
	u := g.base + "/api/v1/budget/events"
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", u, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q, want text/event-stream", ct)
	}
	c := &sseClient{events: make(chan sseEvent, 100000), resp: resp}
	go func() {
		defer close(c.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64*1024), 8<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev != (sseEvent{}) {
					c.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				c.events <- sseEvent{Comment: strings.TrimSpace(line[1:])}
			default:
				k, v, _ := strings.Cut(line, ":")
				v = strings.TrimPrefix(v, " ")
				switch k {
				case "id":
					ev.ID = v
				case "event":
					ev.Event = v
				case "data":
					ev.Data += v
				}
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return c
}

// next returns the next message with data (skipping comments and retry:).
func (c *sseClient) next(t testing.TB) sseEvent {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				t.Fatalf("SSE stream ended")
			}
			if ev.Data != "" {
				return ev
			}
		case <-timeout:
			t.Fatalf("no SSE event within 20s")
		}
	}
}

func (c *sseClient) take(t testing.TB, n int) []sseEvent {
	t.Helper()
	out := make([]sseEvent, 0, n)
	for len(out) < n {
		out = append(out, c.next(t))
	}
	return out
}

// ids lists the ids of frames, for comparisons in failure messages.
func ids(fs []frame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.ID
	}
	return out
}

// concurrently runs fn n times in parallel and waits.
func concurrently(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); fn(i) }()
	}
	wg.Wait()
}

var _ = fmt.Sprintf
