package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/config"
)

// The app's drop-in protocol (the FastAPI backend's routes, frames and
// tokens), tested against the real server over real sockets.

const protoSecret = "protocol-test-secret-0123456789"

// protoAuthOn is the environment of a gateway that checks the app's tokens.
func protoAuthOn(extra ...string) []string {
	return append([]string{"GATEWAY_JWT_SECRET=" + protoSecret, "GATEWAY_INSECURE_NO_AUTH=false"}, extra...)
}

func protoSign(t testing.TB, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatalf("sign token: %v", err)
	}
	return s
}

// protoWSClaims are the claims of the backend's WebSocket token for user.
func protoWSClaims(user int64) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{"sub": strconv.FormatInt(user, 10), "type": "ws",
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
}

func protoWSToken(t testing.TB, user int64) string {
	t.Helper()
	return protoSign(t, jwt.SigningMethodHS256, []byte(protoSecret), protoWSClaims(user))
}

// protoAccessClaims are the claims of the backend's access_token cookie.
func protoAccessClaims(user int64) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{"user_id": user, "telegram_id": 1000 + user,
		"iat": now.Unix(), "exp": now.Add(7 * 24 * time.Hour).Unix()}
}

func protoAccessToken(t testing.TB, user int64) string {
	t.Helper()
	return protoSign(t, jwt.SigningMethodHS256, []byte(protoSecret), protoAccessClaims(user))
}

// protoAuth adds credentials to a request.
type protoAuth func(*http.Request)

func protoCookie(token string) protoAuth {
	return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "access_token", Value: token}) }
}

func protoBearer(token string) protoAuth {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func protoNoAuth(*http.Request) {}

// protoHTTP bounds every request, so that a server that wrongly streams or
// hangs fails the test instead of holding it up.
var protoHTTP = &http.Client{Timeout: 30 * time.Second}

// protoCall makes one HTTP request and returns its status and body.
func protoCall(t testing.TB, method, u, body string, auth protoAuth) (int, []byte) {
	t.Helper()
	code, b, err := protoCallErr(method, u, body, auth)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	return code, b
}

// protoCallErr is protoCall for goroutines other than the test's.
func protoCallErr(method, u, body string, auth protoAuth) (int, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	auth(req)
	resp, err := protoHTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Type") == "text/event-stream" {
		return resp.StatusCode, nil, nil // a stream: its body never ends
	}
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// protoDecodeExact decodes a JSON body keeping numbers as written.
func protoDecodeExact(t testing.TB, b []byte) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return m
}

func protoKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// protoDialRefused dials a WebSocket that must be refused before the upgrade, and
// returns the HTTP status of the refusal.
func protoDialRefused(t testing.TB, g *gw, query string, h http.Header) int {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(g.wsURL(query), h)
	if err == nil {
		conn.Close()
		t.Fatalf("dial %q: upgrade accepted (101), want a refusal", query)
	}
	if resp == nil {
		t.Fatalf("dial %q: %v, without an HTTP response", query, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func protoDialAs(t testing.TB, g *gw, user int64) *wsClient {
	t.Helper()
	c := dialWS(t, g, "token="+protoWSToken(t, user))
	if c.user != user {
		t.Fatalf("connected as user %d, want %d", c.user, user)
	}
	return c
}

// protoNextNonPing returns the next frame that is not the server's ping.
func (c *wsClient) protoNextNonPing(t testing.TB, timeout time.Duration) frame {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no frame other than ping within %s", timeout)
		}
		if f := c.next(t, left); f.Type != "ping" {
			return f
		}
	}
}

func (c *wsClient) protoTakeNonPing(t testing.TB, n int) []frame {
	t.Helper()
	out := make([]frame, 0, n)
	for len(out) < n {
		out = append(out, c.protoNextNonPing(t, 20*time.Second))
	}
	return out
}

// protoQuiet checks that nothing but pings arrives for d.
func (c *wsClient) protoQuiet(t testing.TB, d time.Duration) {
	t.Helper()
	end := time.After(d)
	for {
		select {
		case f := <-c.frames:
			if f.Type != "ping" {
				t.Fatalf("unexpected frame %s %s", f.Type, f.Data)
			}
		case ce := <-c.closed:
			c.closed <- ce
			t.Fatalf("connection closed: %v", ce)
		case <-end:
			return
		}
	}
}

// protoPingPong sends {"type":"ping"} and expects pong as the next non-ping frame.
func (c *wsClient) protoPingPong(t testing.TB) {
	t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatalf("write ping: %v", err)
	}
	f := c.protoNextNonPing(t, 5*time.Second)
	if f.Type != "pong" {
		t.Fatalf("answer to ping: %s %s, want pong", f.Type, f.Data)
	}
	ts, _ := f.field(t, "timestamp").(string)
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Fatalf("pong data.timestamp %q: %v", ts, err)
	}
}

// protoCloseNormally closes a socket from the client side with a close handshake.
func (c *wsClient) protoCloseNormally() {
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
		time.Now().Add(time.Second))
	select {
	case <-c.closed:
	case <-time.After(2 * time.Second):
	}
	c.conn.Close()
}

func protoStatusURL(g *gw) string { return g.base + "/api/v1/budget/ws/status" }

// protoWSStatus returns /ws/status for auth, which must answer 200.
func protoWSStatus(t testing.TB, g *gw, auth protoAuth) map[string]any {
	t.Helper()
	code, b := protoCall(t, http.MethodGet, protoStatusURL(g), "", auth)
	if code != http.StatusOK {
		t.Fatalf("GET /ws/status: %d %s", code, b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return m
}

func protoStatusShape(total, mine, perUser, maxTotal float64) map[string]any {
	return map[string]any{"total_connections": total, "user_connections": mine,
		"limits": map[string]any{"max_per_user": perUser, "max_total": maxTotal}}
}

// protoWaitStatus polls /ws/status until it equals want (connections are released
// after the close handshake, asynchronously).
func protoWaitStatus(t testing.TB, g *gw, auth protoAuth, want map[string]any) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := protoWSStatus(t, g, auth)
		if reflect.DeepEqual(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ws/status %v, want %v within 5s", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var protoUUIDv4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// 1. The WebSocket handshake takes the backend's ws token in ?token= and
// refuses every other credential with 403 before the upgrade.
func TestProtocolWSAuth(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, protoAuthOn()...)

	// A valid token: the upgrade succeeds, the first frame names the user and
	// the connection.
	conn, resp, err := websocket.DefaultDialer.Dial(g.wsURL("token="+protoWSToken(t, 42)), nil)
	if err != nil {
		t.Fatalf("dial with a valid token: %v (response %v)", err, resp)
	}
	defer conn.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read connected: %v", err)
	}
	hello := protoDecodeExact(t, msg)
	if hello["type"] != "connected" {
		t.Fatalf("first frame %s, want connected", msg)
	}
	data, _ := hello["data"].(map[string]any)
	if !slices.Equal(protoKeys(data), []string{"connection_id", "user_id"}) || data["user_id"] != json.Number("42") {
		t.Fatalf("connected data %s, want exactly user_id 42 and connection_id", msg)
	}
	if id, _ := data["connection_id"].(string); !protoUUIDv4.MatchString(id) {
		t.Fatalf("connection_id %q is not a UUID v4", id)
	}
	if ts, _ := hello["timestamp"].(string); ts == "" {
		t.Fatalf("connected frame without timestamp: %s", msg)
	}

	// Every bad credential is refused with 403, never upgraded.
	key := []byte(protoSecret)
	past := time.Now().Add(-10 * time.Minute)
	with := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := protoWSClaims(42)
		mod(c)
		return c
	}
	none := protoSign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, protoWSClaims(42))
	cases := []struct {
		name, query string
	}{
		{"no token", ""},
		{"empty token", "token="},
		{"garbage", "token=not.a.jwt"},
		{"garbage2", "token=" + url.QueryEscape("hello world")},
		{"wrong signature", "token=" + protoSign(t, jwt.SigningMethodHS256, []byte("another-secret"), protoWSClaims(42))},
		{"expired", "token=" + protoSign(t, jwt.SigningMethodHS256, key, with(func(c jwt.MapClaims) {
			c["iat"], c["exp"] = past.Unix(), past.Add(5*time.Minute).Unix()
		}))},
		{"no exp", "token=" + protoSign(t, jwt.SigningMethodHS256, key, with(func(c jwt.MapClaims) { delete(c, "exp") }))},
		{"type access", "token=" + protoSign(t, jwt.SigningMethodHS256, key, with(func(c jwt.MapClaims) { c["type"] = "access" }))},
		{"no type", "token=" + protoSign(t, jwt.SigningMethodHS256, key, with(func(c jwt.MapClaims) { delete(c, "type") }))},
		{"HS512", "token=" + protoSign(t, jwt.SigningMethodHS512, key, protoWSClaims(42))},
		{"HS384", "token=" + protoSign(t, jwt.SigningMethodHS384, key, protoWSClaims(42))},
		{"alg none", "token=" + none},
		{"alg none, signature stripped", "token=" + strings.TrimSuffix(none, ".")},
		{"sub not a number", "token=" + protoSign(t, jwt.SigningMethodHS256, key, with(func(c jwt.MapClaims) { c["sub"] = "abc" }))},
		{"sub fractional", "token=" + protoSign(t, jwt.SigningMethodHS256, key, with(func(c jwt.MapClaims) { c["sub"] = 42.5 }))},
		{"no sub", "token=" + protoSign(t, jwt.SigningMethodHS256, key, with(func(c jwt.MapClaims) { delete(c, "sub") }))},
		{"access token in ?token", "token=" + protoAccessToken(t, 42)},
	}
	for _, c := range cases {
		if code := protoDialRefused(t, g, c.query, nil); code != http.StatusForbidden {
			t.Errorf("%s: handshake status %d, want 403", c.name, code)
		}
	}
	// The cookie is not a WebSocket credential: only ?token= is.
	h := http.Header{"Cookie": {"access_token=" + protoAccessToken(t, 42)}}
	if code := protoDialRefused(t, g, "", h); code != http.StatusForbidden {
		t.Errorf("cookie without ?token: status %d, want 403", code)
	}
	h = http.Header{"Authorization": {"Bearer " + protoWSToken(t, 42)}}
	if code := protoDialRefused(t, g, "", h); code != http.StatusForbidden {
		t.Errorf("ws token as Bearer without ?token: status %d, want 403", code)
	}
}

// 1b. GATEWAY_USER_ACTIVE_SQL: only active users connect.
func TestProtocolWSAuthActiveUser(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	db.exec(t, `CREATE TABLE t_d_user (id int PRIMARY KEY, is_active bool NOT NULL);
	            INSERT INTO t_d_user VALUES (1, true), (2, false)`)
	g := startGateway(t, db, protoAuthOn("GATEWAY_USER_ACTIVE_SQL=SELECT is_active FROM t_d_user WHERE id = $1")...)

	protoDialAs(t, g, 1)
	if code := protoDialRefused(t, g, "token="+protoWSToken(t, 2), nil); code != http.StatusForbidden {
		t.Errorf("inactive user: status %d, want 403", code)
	}
	if code := protoDialRefused(t, g, "token="+protoWSToken(t, 3), nil); code != http.StatusForbidden {
		t.Errorf("unknown user: status %d, want 403", code)
	}
	// The cookie routes ask too.
	if code, b := protoCall(t, http.MethodGet, protoStatusURL(g), "", protoCookie(protoAccessToken(t, 1))); code != http.StatusOK {
		t.Errorf("active user /ws/status: %d %s", code, b)
	}
	for _, u := range []int64{2, 3} {
		if code, b := protoCall(t, http.MethodGet, protoStatusURL(g), "", protoCookie(protoAccessToken(t, u))); code != http.StatusUnauthorized {
			t.Errorf("user %d /ws/status: %d %s, want 401", u, code, b)
		}
	}
	// A user deactivated later is refused from then on.
	db.exec(t, `UPDATE t_d_user SET is_active = false WHERE id = 1`)
	if code := protoDialRefused(t, g, "token="+protoWSToken(t, 1), nil); code != http.StatusForbidden {
		t.Errorf("deactivated user: status %d, want 403", code)
	}
}

// 2. Connection limits per user and in total; a closed socket frees its slot.
func TestProtocolConnectionLimits(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, protoAuthOn("GATEWAY_MAX_CONNECTIONS_PER_USER=2", "GATEWAY_MAX_CONNECTIONS=3")...)
	user1 := protoCookie(protoAccessToken(t, 1))

	a := protoDialAs(t, g, 1)
	protoDialAs(t, g, 1)
	if code := protoDialRefused(t, g, "token="+protoWSToken(t, 1), nil); code != http.StatusForbidden {
		t.Fatalf("user 1's third socket: status %d, want 403", code)
	}
	protoDialAs(t, g, 2)
	if code := protoDialRefused(t, g, "token="+protoWSToken(t, 3), nil); code != http.StatusForbidden {
		t.Fatalf("fourth socket overall (user 3): status %d, want 403", code)
	}
	if code := protoDialRefused(t, g, "token="+protoWSToken(t, 2), nil); code != http.StatusForbidden {
		t.Fatalf("fourth socket overall (user 2): status %d, want 403", code)
	}
	if got, want := protoWSStatus(t, g, user1), protoStatusShape(3, 2, 2, 3); !reflect.DeepEqual(got, want) {
		t.Fatalf("/ws/status %v, want %v (refused sockets must not count)", got, want)
	}

	a.protoCloseNormally()
	protoWaitStatus(t, g, user1, protoStatusShape(2, 1, 2, 3))
	protoDialAs(t, g, 3) // the freed slot
	if code := protoDialRefused(t, g, "token="+protoWSToken(t, 1), nil); code != http.StatusForbidden {
		t.Fatalf("after the slot was taken again: status %d, want 403", code)
	}
	protoWaitStatus(t, g, protoBearer(protoAccessToken(t, 3)), protoStatusShape(3, 1, 2, 3))
}

// 2b. Serving without a secret needs the explicit opt-out.
func TestProtocolOpenModeNeedsOptOut(t *testing.T) {
	t.Parallel()
	for _, environ := range [][]string{
		{"DATABASE_URL=postgres://127.0.0.1:1/none", "GATEWAY_ADDR=127.0.0.1:0"},
		{"DATABASE_URL=postgres://127.0.0.1:1/none", "GATEWAY_ADDR=127.0.0.1:0", "GATEWAY_INSECURE_NO_AUTH=false"},
		{"DATABASE_URL=postgres://127.0.0.1:1/none", "GATEWAY_ADDR=127.0.0.1:0", "GATEWAY_JWT_SECRET="},
	} {
		cfg, err := config.Load(environ)
		if err != nil {
			t.Fatalf("load %v: %v", environ, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err = serve(ctx, cfg, testLogger(), nil)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "GATEWAY_JWT_SECRET") {
			t.Fatalf("serve %v: %v, want a refusal naming GATEWAY_JWT_SECRET", environ, err)
		}
		if !strings.Contains(err.Error(), "GATEWAY_INSECURE_NO_AUTH") {
			t.Errorf("serve %v: %v, want it to name the opt-out GATEWAY_INSECURE_NO_AUTH", environ, err)
		}
	}
	cfg, err := config.Load([]string{"DATABASE_URL=postgres://127.0.0.1:1/none", "GATEWAY_INSECURE_NO_AUTH=true"})
	if err != nil || cfg.CheckServe() != nil {
		t.Fatalf("open mode with the opt-out: %v / %v", err, cfg.CheckServe())
	}
}

// 3. Client frames: ping, check_online; junk is ignored; server pings;
// oversized messages close with 1009.
func TestProtocolFrames(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_PING_INTERVAL=100ms")

	// The server pings every interval, with a timestamp.
	p := dialWS(t, g, "")
	start := time.Now()
	for i := range 5 {
		f := p.next(t, 2*time.Second)
		if f.Type != "ping" {
			t.Fatalf("frame %d on an idle socket: %s %s, want ping", i, f.Type, f.Data)
		}
		ts, _ := f.field(t, "timestamp").(string)
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Fatalf("ping data.timestamp %q: %v", ts, err)
		}
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Fatalf("5 pings in %s, want about 500ms at a 100ms interval", d)
	}

	c := dialWS(t, g, "")
	c.protoPingPong(t)
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"check_online"}`)); err != nil {
		t.Fatal(err)
	}
	f := c.protoNextNonPing(t, 5*time.Second)
	if f.Type != "online_status" || f.field(t, "online") != true {
		t.Fatalf("answer to check_online: %s %s, want online_status with online true", f.Type, f.Data)
	}
	if ts, _ := f.field(t, "timestamp").(string); ts == "" {
		t.Fatalf("online_status without data.timestamp: %s", f.Data)
	}

	// Junk is ignored: no answer, no close.
	for _, m := range []string{`{"type":"join","channel":"x"}`, `{"type":123}`, `{"no":"type"}`, `null`, `[1,2]`,
		`not json`, `{"type":"ping"`, ``, `{"type":"pong"}`} {
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatalf("write %q: %v", m, err)
		}
	}
	if err := c.conn.WriteMessage(websocket.BinaryMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.conn.WriteMessage(websocket.BinaryMessage, []byte{0xff, 0x00, 0x01}); err != nil {
		t.Fatal(err)
	}
	c.protoQuiet(t, 300*time.Millisecond)
	c.protoPingPong(t)
	id := db.insertFact(t, 77, "2026-01-03")
	if f := c.protoNextNonPing(t, 10*time.Second); f.Type != "budget_fact_created" || f.field(t, "id") != float64(id) {
		t.Fatalf("after junk: %s %s, want the fact %d", f.Type, f.Data, id)
	}

	// A large message within the limit is fine; one over 4096 bytes closes
	// the socket with 1009.
	pad := func(n int) []byte {
		b := []byte(`{"type":"ping","pad":"`)
		b = append(b, bytes.Repeat([]byte("x"), n-len(b)-2)...)
		return append(b, `"}`...)
	}
	if err := c.conn.WriteMessage(websocket.TextMessage, pad(4000)); err != nil {
		t.Fatal(err)
	}
	if f := c.protoNextNonPing(t, 5*time.Second); f.Type != "pong" {
		t.Fatalf("answer to a 4000-byte ping: %s", f.Type)
	}
	if err := c.conn.WriteMessage(websocket.TextMessage, pad(5000)); err != nil {
		t.Fatal(err)
	}
	if ce := c.waitClose(t, 5*time.Second); ce == nil || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("after a 5000-byte message: close %v, want 1009", ce)
	}
	// The other socket is unaffected: it got the fact, and answers pings.
	if f := p.protoNextNonPing(t, 10*time.Second); f.Type != "budget_fact_created" || f.field(t, "id") != float64(id) {
		t.Fatalf("idle socket: %s %s, want the fact %d", f.Type, f.Data, id)
	}
	p.protoPingPong(t)
}

// 4. /ws/status and /ws/disconnect.
func TestProtocolStatusAndDisconnect(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, protoAuthOn("GATEWAY_MAX_CONNECTIONS_PER_USER=7", "GATEWAY_MAX_CONNECTIONS=90")...)
	u5, u6 := protoCookie(protoAccessToken(t, 5)), protoCookie(protoAccessToken(t, 6))

	a1, a2 := protoDialAs(t, g, 5), protoDialAs(t, g, 5)
	b1 := protoDialAs(t, g, 6)

	// Exact shape, by cookie and by Bearer.
	_, raw := protoCall(t, http.MethodGet, protoStatusURL(g), "", u5)
	if m := protoDecodeExact(t, raw); !slices.Equal(protoKeys(m), []string{"limits", "total_connections", "user_connections"}) {
		t.Fatalf("/ws/status keys %v: %s", protoKeys(m), raw)
	}
	for _, c := range []struct {
		name string
		auth protoAuth
		want map[string]any
	}{
		{"cookie user 5", u5, protoStatusShape(3, 2, 7, 90)},
		{"bearer user 5", protoBearer(protoAccessToken(t, 5)), protoStatusShape(3, 2, 7, 90)},
		{"cookie user 6", u6, protoStatusShape(3, 1, 7, 90)},
		{"bearer user 9", protoBearer(protoAccessToken(t, 9)), protoStatusShape(3, 0, 7, 90)},
	} {
		if got := protoWSStatus(t, g, c.auth); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: /ws/status %v, want %v", c.name, got, c.want)
		}
	}

	// Missing or bad auth: 401 on both routes.
	expired := protoAccessClaims(5)
	expired["iat"], expired["exp"] = time.Now().Add(-8*24*time.Hour).Unix(), time.Now().Add(-time.Hour).Unix()
	badAuth := map[string]protoAuth{
		"none":            protoNoAuth,
		"garbage cookie":  protoCookie("garbage"),
		"garbage bearer":  protoBearer("garbage"),
		"wrong signature": protoCookie(protoSign(t, jwt.SigningMethodHS256, []byte("nope"), protoAccessClaims(5))),
		"expired":         protoCookie(protoSign(t, jwt.SigningMethodHS256, []byte(protoSecret), expired)),
		"HS512":           protoCookie(protoSign(t, jwt.SigningMethodHS512, []byte(protoSecret), protoAccessClaims(5))),
		"ws token":        protoCookie(protoWSToken(t, 5)), // no user_id
		"basic":           func(r *http.Request) { r.SetBasicAuth("5", protoSecret) },
	}
	for name, auth := range badAuth {
		if code, b := protoCall(t, http.MethodGet, protoStatusURL(g), "", auth); code != http.StatusUnauthorized {
			t.Errorf("/ws/status with %s: %d %s, want 401", name, code, b)
		}
		body := fmt.Sprintf(`{"connection_id":%q}`, a1.id)
		if code, b := protoCall(t, http.MethodPost, g.base+"/api/v1/budget/ws/disconnect", body, auth); code != http.StatusUnauthorized {
			t.Errorf("/ws/disconnect with %s: %d %s, want 401", name, code, b)
		}
	}

	disconnect := func(auth protoAuth, body string) (int, string) {
		t.Helper()
		code, b := protoCall(t, http.MethodPost, g.base+"/api/v1/budget/ws/disconnect", body, auth)
		return code, strings.TrimSpace(string(b))
	}
	idBody := func(id string) string { return fmt.Sprintf(`{"connection_id":%q}`, id) }

	// Bad bodies: 400.
	for _, body := range []string{"", "not json", `{}`, `{"connection_id":""}`, `{"connection_id":5}`, `[]`} {
		if code, b := disconnect(u5, body); code != http.StatusBadRequest {
			t.Errorf("/ws/disconnect body %q: %d %s, want 400", body, code, b)
		}
	}
	// Unknown id, another user's socket: not_found, and nothing closes.
	for _, c := range []struct {
		auth protoAuth
		id   string
	}{{u5, "9d7a0f6e-3b8e-4c1d-9a55-0e2f6f7b1c2d"}, {u6, a1.id}, {u5, b1.id}} {
		if code, b := disconnect(c.auth, idBody(c.id)); code != http.StatusOK || b != `{"status":"not_found"}` {
			t.Errorf("/ws/disconnect %s: %d %s, want 200 not_found", c.id, code, b)
		}
	}
	a1.protoPingPong(t)
	b1.protoPingPong(t)

	// The user's own socket: disconnected, closed with 1000.
	if code, b := disconnect(u5, idBody(a1.id)); code != http.StatusOK || b != `{"status":"disconnected"}` {
		t.Fatalf("/ws/disconnect own socket: %d %s, want 200 disconnected", code, b)
	}
	if ce := a1.waitClose(t, 5*time.Second); ce == nil || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("disconnected socket: close %v, want 1000", ce)
	}
	protoWaitStatus(t, g, u5, protoStatusShape(2, 1, 7, 90))
	if code, b := disconnect(u5, idBody(a1.id)); code != http.StatusOK || b != `{"status":"not_found"}` {
		t.Errorf("/ws/disconnect of a closed socket: %d %s, want not_found", code, b)
	}
	a2.protoPingPong(t)
	b1.protoPingPong(t)
	// Events still reach the sockets that stay.
	id := db.insertFact(t, 5, "2026-01-05")
	for _, c := range []*wsClient{a2, b1} {
		if f := c.protoNextNonPing(t, 10*time.Second); f.Type != "budget_fact_created" || f.field(t, "id") != float64(id) {
			t.Fatalf("after the disconnect: %s %s, want fact %d", f.Type, f.Data, id)
		}
	}
}

// 5. POST /ws/token mints a WebSocket token, only when enabled.
func TestProtocolMintWSToken(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, protoAuthOn("GATEWAY_MINT_WS_TOKEN=true")...)
	off := startGateway(t, db, protoAuthOn()...)
	tokenURL := func(g *gw) string { return g.base + "/api/v1/budget/ws/token" }

	for name, auth := range map[string]protoAuth{"cookie": protoCookie(protoAccessToken(t, 77)), "bearer": protoBearer(protoAccessToken(t, 77))} {
		code, b := protoCall(t, http.MethodPost, tokenURL(g), "", auth)
		if code != http.StatusOK {
			t.Fatalf("POST /ws/token by %s: %d %s", name, code, b)
		}
		m := protoDecodeExact(t, b)
		tok, _ := m["token"].(string)
		if !slices.Equal(protoKeys(m), []string{"token"}) || tok == "" {
			t.Fatalf("POST /ws/token by %s: %s, want {\"token\": ...}", name, b)
		}
		claims := jwt.MapClaims{}
		if _, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return []byte(protoSecret), nil },
			jwt.WithValidMethods([]string{"HS256"})); err != nil {
			t.Fatalf("minted token: %v", err)
		}
		exp, _ := claims.GetExpirationTime()
		if claims["sub"] != "77" || claims["type"] != "ws" || exp == nil || time.Until(exp.Time) > 5*time.Minute+5*time.Second ||
			time.Until(exp.Time) < 4*time.Minute {
			t.Fatalf("minted claims %v, want sub \"77\", type ws, exp in 5 minutes", claims)
		}
		c := dialWS(t, g, "token="+tok)
		if c.user != 77 {
			t.Fatalf("socket opened with the minted token is user %d, want 77", c.user)
		}
	}
	if code, b := protoCall(t, http.MethodPost, tokenURL(g), "", protoNoAuth); code != http.StatusUnauthorized {
		t.Errorf("POST /ws/token without auth: %d %s, want 401", code, b)
	}
	if code, b := protoCall(t, http.MethodPost, tokenURL(g), "", protoCookie(protoWSToken(t, 77))); code != http.StatusUnauthorized {
		t.Errorf("POST /ws/token with a ws token as cookie: %d %s, want 401", code, b)
	}
	if code, _ := protoCall(t, http.MethodPost, tokenURL(off), "", protoCookie(protoAccessToken(t, 77))); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Errorf("POST /ws/token without GATEWAY_MINT_WS_TOKEN: %d, want 404 or 405", code)
	}
}

// protoPollAnswer is /poll's body.
type protoPollAnswer struct {
	Events []struct {
		ID        string          `json:"id"`
		Type      string          `json:"type"`
		Data      json.RawMessage `json:"data"`
		Timestamp float64         `json:"timestamp"`
	} `json:"events"`
	ServerTime float64 `json:"server_time"`
	raw        []byte
}

func protoPollURL(g *gw, since string, timeout int) string {
	return fmt.Sprintf("%s/api/v1/budget/poll?since=%s&timeout=%d", g.base, url.QueryEscape(since), timeout)
}

func protoSince(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// protoPollErr polls once; safe off the test goroutine.
func protoPollErr(g *gw, auth protoAuth, since string, timeout int) (protoPollAnswer, error) {
	code, b, err := protoCallErr(http.MethodGet, protoPollURL(g, since, timeout), "", auth)
	if err != nil {
		return protoPollAnswer{}, err
	}
	if code != http.StatusOK {
		return protoPollAnswer{}, fmt.Errorf("poll since=%s: %d %s", since, code, b)
	}
	var a protoPollAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		return protoPollAnswer{}, fmt.Errorf("decode %s: %w", b, err)
	}
	a.raw = b
	return a, nil
}

func protoPollOnce(t testing.TB, g *gw, auth protoAuth, since string, timeout int) protoPollAnswer {
	t.Helper()
	a, err := protoPollErr(g, auth, since, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// protoCheckPollShape checks the exact keys of an answer and of its events, and
// that the timestamps are JSON numbers.
func protoCheckPollShape(t testing.TB, a protoPollAnswer) {
	t.Helper()
	m := protoDecodeExact(t, a.raw)
	if !slices.Equal(protoKeys(m), []string{"events", "server_time"}) {
		t.Fatalf("poll keys %v: %s", protoKeys(m), a.raw)
	}
	if _, ok := m["server_time"].(json.Number); !ok {
		t.Fatalf("server_time is not a number: %s", a.raw)
	}
	evs, ok := m["events"].([]any)
	if !ok {
		t.Fatalf("events is not a list: %s", a.raw)
	}
	for _, e := range evs {
		em, _ := e.(map[string]any)
		if !slices.Equal(protoKeys(em), []string{"data", "id", "timestamp", "type"}) {
			t.Fatalf("poll event keys %v: %v", protoKeys(em), em)
		}
		if n, ok := em["timestamp"].(json.Number); !ok {
			t.Fatalf("event timestamp is not a number: %v", em)
		} else if f, _ := n.Float64(); f < 1e9 {
			t.Fatalf("event timestamp %v is not unix seconds", n)
		}
	}
}

// 6. /poll: auth, input, answers at once, waits, empty waits, cap.
func TestProtocolPoll(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, protoAuthOn()...)
	me := protoCookie(protoAccessToken(t, 3))

	for name, auth := range map[string]protoAuth{"none": protoNoAuth, "garbage": protoCookie("x.y.z"), "ws token": protoCookie(protoWSToken(t, 3))} {
		if code, b := protoCall(t, http.MethodGet, protoPollURL(g, "0", 0), "", auth); code != http.StatusUnauthorized {
			t.Errorf("poll with %s auth: %d %s, want 401", name, code, b)
		}
	}
	for _, since := range []string{"abc", "-1", "NaN", "nan", "Inf", "+Inf", "1e400", "0x10"} {
		if code, b := protoCall(t, http.MethodGet, protoPollURL(g, since, 0), "", me); code != http.StatusBadRequest {
			t.Errorf("poll since=%s: %d %s, want 400", since, code, b)
		}
	}
	for _, timeout := range []string{"x", "-1", "1.5"} {
		u := g.base + "/api/v1/budget/poll?since=0&timeout=" + timeout
		if code, b := protoCall(t, http.MethodGet, u, "", me); code != http.StatusBadRequest {
			t.Errorf("poll timeout=%s: %d %s, want 400", timeout, code, b)
		}
	}

	// With events present, since=0 answers at once.
	id1 := db.insertFact(t, 1, "2026-01-01")
	id2 := db.insertFact(t, 2, "2026-01-02")
	var a protoPollAnswer
	deadline := time.Now().Add(10 * time.Second)
	for len(a.Events) < 2 && time.Now().Before(deadline) { // the gateway reads the log asynchronously
		start := time.Now()
		a = protoPollOnce(t, g, me, "0", 10)
		if d := time.Since(start); len(a.Events) > 0 && d > time.Second {
			t.Fatalf("poll with events present took %s", d)
		}
	}
	protoCheckPollShape(t, a)
	if len(a.Events) != 2 || a.Events[0].Type != "budget_fact_created" {
		t.Fatalf("poll since=0: %s, want the two facts", a.raw)
	}
	for i, want := range []int64{id1, id2} {
		var d struct{ ID int64 }
		_ = json.Unmarshal(a.Events[i].Data, &d)
		if d.ID != want {
			t.Fatalf("event %d: %s, want fact %d", i, a.Events[i].Data, want)
		}
	}
	if a.ServerTime != a.Events[1].Timestamp || a.Events[0].Timestamp >= a.Events[1].Timestamp ||
		time.Since(time.UnixMicro(int64(a.Events[1].Timestamp*1e6))).Abs() > time.Minute {
		t.Fatalf("timestamps %v, %v and server_time %v: want increasing commit times, server_time the last", a.Events[0].Timestamp, a.Events[1].Timestamp, a.ServerTime)
	}

	// A poll from server_time waits for the next commit and answers with it.
	st := a.ServerTime
	type result struct {
		a       protoPollAnswer
		err     error
		elapsed time.Duration
	}
	waitFor := func(since float64, timeout int) <-chan result {
		ch := make(chan result, 1)
		go func() {
			start := time.Now()
			a, err := protoPollErr(g, me, protoSince(since), timeout)
			ch <- result{a, err, time.Since(start)}
		}()
		return ch
	}
	ch := waitFor(st, 10)
	time.Sleep(400 * time.Millisecond)
	select {
	case r := <-ch:
		t.Fatalf("poll from server_time answered before any commit: %s %v", r.a.raw, r.err)
	default:
	}
	id3 := db.insertFact(t, 3, "2026-01-03")
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	protoCheckPollShape(t, r.a)
	if len(r.a.Events) != 1 || !jsonEqual(t, r.a.Events[0].Data, fmt.Sprintf(`{"id":%d,"article_id":1,"amount":3,"fact_date":"2026-01-03","description":null,"record_type":"fact"}`, id3)) {
		t.Fatalf("waiting poll answered %s, want exactly fact %d", r.a.raw, id3)
	}
	if r.elapsed > 4*time.Second {
		t.Fatalf("waiting poll answered after %s, want soon after the commit", r.elapsed)
	}
	if r.a.ServerTime != r.a.Events[0].Timestamp || r.a.ServerTime <= st {
		t.Fatalf("server_time %v after %v, event at %v", r.a.ServerTime, st, r.a.Events[0].Timestamp)
	}
	st = r.a.ServerTime

	// An empty wait answers with no events after the timeout.
	start := time.Now()
	e := protoPollOnce(t, g, me, protoSince(st), 1)
	if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
		t.Fatalf("empty poll with timeout=1 took %s", d)
	}
	protoCheckPollShape(t, e)
	if !bytes.HasPrefix(e.raw, []byte(`{"events":[],`)) || e.ServerTime != st {
		t.Fatalf("empty poll: %s, want no events and server_time %v", e.raw, st)
	}
	// timeout=0 answers at once.
	start = time.Now()
	if e := protoPollOnce(t, g, me, protoSince(st), 0); len(e.Events) != 0 || time.Since(start) > time.Second {
		t.Fatalf("poll timeout=0: %s after %s", e.raw, time.Since(start))
	}

	// timeout=999 is accepted (capped at 30 s) and answers with a commit.
	ch = waitFor(st, 999)
	time.Sleep(200 * time.Millisecond)
	id4 := db.insertFact(t, 4, "2026-01-04")
	r = <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.a.Events) != 1 || !strings.Contains(string(r.a.Events[0].Data), fmt.Sprintf(`"id":%d,`, id4)) {
		t.Fatalf("poll timeout=999 answered %s, want fact %d", r.a.raw, id4)
	}
}

// 6b. The client's loop (since = server_time) over a burst of commits gets
// every event once, in commit order: the order the WebSocket delivers.
func TestProtocolPollLoopExactlyOnce(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	ws := dialWS(t, g, "")

	const writers, per = 5, 10
	type result struct {
		ids []string
		err error
	}
	done := make(chan result, 1)
	go func() {
		var got []string
		since := "0"
		deadline := time.Now().Add(20 * time.Second)
		for len(got) < writers*per && time.Now().Before(deadline) {
			a, err := protoPollErr(g, protoNoAuth, since, 2)
			if err != nil {
				done <- result{got, err}
				return
			}
			for _, e := range a.Events {
				got = append(got, e.ID)
			}
			since = protoSince(a.ServerTime)
			time.Sleep(time.Duration(len(got)%3) * 10 * time.Millisecond) // the client waits a little between polls
		}
		// Then nothing more.
		a, err := protoPollErr(g, protoNoAuth, since, 1)
		if err == nil && len(a.Events) > 0 {
			err = fmt.Errorf("extra events after the burst: %s", a.raw)
		}
		done <- result{got, err}
	}()
	concurrently(writers, func(w int) {
		for i := range per {
			if _, err := db.pool.Exec(context.Background(),
				`INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-02-01', $2)`, i, fmt.Sprintf("w%d", w)); err != nil {
				t.Error(err)
			}
		}
	})
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	frames := ws.protoTakeNonPing(t, writers*per)
	if !slices.Equal(r.ids, ids(frames)) {
		t.Fatalf("poll loop delivered %d events:\n%v\nWebSocket (commit order):\n%v", len(r.ids), r.ids, ids(frames))
	}
	next := map[string]float64{}
	for _, f := range frames {
		desc := f.field(t, "description").(string)
		if a := f.field(t, "amount").(float64); a != next[desc] {
			t.Fatalf("writer %s: amount %v, want %v", desc, a, next[desc])
		}
		next[desc]++
	}
}

// 6c. One transaction larger than an answer's page is never split across
// answers: the next poll starts after its commit time and would skip the
// rest.
func TestProtocolPollLargeTransaction(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	const n = 1500
	db.exec(t, `INSERT INTO facts (amount, fact_date) SELECT i, '2026-01-02' FROM generate_series(0, $1 - 1) i`, n)
	db.exec(t, `INSERT INTO articles (name) VALUES ('marker')`)

	var got []float64
	since := "0"
	for range 10 {
		a := protoPollOnce(t, g, protoNoAuth, since, 2)
		done := false
		for _, e := range a.Events {
			if e.Type == "article_created" {
				done = true
				continue
			}
			var d struct{ Amount float64 }
			_ = json.Unmarshal(e.Data, &d)
			got = append(got, d.Amount)
		}
		since = protoSince(a.ServerTime)
		if done {
			break
		}
	}
	if len(got) != n {
		t.Fatalf("poll loop delivered %d of the %d rows of one statement", len(got), n)
	}
	for i, a := range got {
		if a != float64(i) {
			t.Fatalf("row %d: amount %v", i, a)
		}
	}
}

// 7. SSE accepts the cookie, a Bearer token or ?token=<ws token>.
func TestProtocolSSEAuth(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db, protoAuthOn()...)
	u := g.base + "/api/v1/budget/events"

	for name, c := range map[string]struct {
		query string
		auth  protoAuth
	}{
		"none":             {"", protoNoAuth},
		"garbage cookie":   {"", protoCookie("garbage")},
		"wrong signature":  {"", protoBearer(protoSign(t, jwt.SigningMethodHS256, []byte("nope"), protoAccessClaims(1)))},
		"garbage ?token":   {"?token=garbage", protoNoAuth},
		"access ?token":    {"?token=" + protoAccessToken(t, 1), protoNoAuth},
		"ws token, cookie": {"", protoCookie(protoWSToken(t, 1))},
	} {
		if code, b := protoCall(t, http.MethodGet, u+c.query, "", c.auth); code != http.StatusUnauthorized {
			t.Errorf("/events with %s: %d %s, want 401", name, code, b)
		}
	}
	streams := []*sseClient{
		dialSSE(t, g, "", http.Header{"Cookie": {"access_token=" + protoAccessToken(t, 1)}}),
		dialSSE(t, g, "", http.Header{"Authorization": {"Bearer " + protoAccessToken(t, 1)}}),
		dialSSE(t, g, "token="+url.QueryEscape(protoWSToken(t, 1)), nil),
	}
	id := db.insertFact(t, 9, "2026-01-09")
	for i, s := range streams {
		ev := s.next(t)
		var f frame
		if err := json.Unmarshal([]byte(ev.Data), &f); err != nil || f.Type != "budget_fact_created" || f.field(t, "id") != float64(id) {
			t.Fatalf("stream %d: %s %s, want fact %d", i, ev.Event, ev.Data, id)
		}
	}
}

// protoAppSchema is the app's own schema, as PROTOCOL.md describes it.
const protoAppSchema = `
CREATE TABLE t_d_article (
    id          serial PRIMARY KEY,
    user_id     int NOT NULL,
    parent_id   int NULL REFERENCES t_d_article (id),
    name        varchar(255) NOT NULL,
    description text,
    type        varchar(20) NOT NULL,
    code        varchar(50),
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamp DEFAULT now(),
    updated_at  timestamp DEFAULT now()
);
CREATE TABLE t_f_budget_fact (
    id                  serial,
    user_id             int NOT NULL,
    article_id          int NOT NULL,
    financial_center_id int NULL,
    cost_center_id      int NULL,
    amount              bigint NOT NULL CHECK (amount >= 0),
    fact_date           date NOT NULL,
    description         text,
    record_type         varchar(10) NOT NULL DEFAULT 'fact',
    transfer_id         bigint,
    recurring_plan_id   int,
    created_at          timestamp DEFAULT now(),
    updated_at          timestamp DEFAULT now(),
    PRIMARY KEY (id, fact_date)
) PARTITION BY RANGE (fact_date);
CREATE TABLE t_f_budget_fact_2026_01 PARTITION OF t_f_budget_fact FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE t_f_budget_fact_2026_02 PARTITION OF t_f_budget_fact FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE t_f_budget_fact_2026_03 PARTITION OF t_f_budget_fact FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');`

const protoAppTrack = "t_f_budget_fact:{record_type}:id|article_id|financial_center_id|cost_center_id|amount|fact_date|description|record_type|transfer_id|tab_origin_id=budget.tab_origin_id:facts_batch_deleted/fact_ids,t_d_article:article"

// protoNewAppDB is a database with the app's real schema, migrated with the
// app's GATEWAY_TRACK.
func protoNewAppDB(t *testing.T) *testDB {
	t.Helper()
	db := newBareDB(t, protoAppSchema)
	if out := db.migrate(t, "GATEWAY_TRACK="+protoAppTrack); !strings.Contains(out, "facts_batch_deleted") {
		t.Fatalf("migrate output does not mention the batch event:\n%s", out)
	}
	return db
}

// protoExactData checks that a frame's data is exactly want (numbers compared as
// written, so an integer must be written as one).
func protoExactData(t testing.TB, f frame, want string) {
	t.Helper()
	got, w := protoDecodeExact(t, f.Data), protoDecodeExact(t, []byte(want))
	if !reflect.DeepEqual(got, w) {
		t.Fatalf("%s data:\n got %s\nwant %s", f.Type, f.Data, want)
	}
}

// 8. The app's real tables, named and shaped as its client expects.
func TestProtocolAppSchema(t *testing.T) {
	t.Parallel()
	db := protoNewAppDB(t)
	g := startGateway(t, db)
	c := dialWS(t, g, "")
	ctx := context.Background()

	art := db.queryInt(t, `INSERT INTO t_d_article (user_id, name, type) VALUES (1, 'food', 'expense') RETURNING id`)
	if f := c.protoNextNonPing(t, 10*time.Second); f.Type != "article_created" {
		t.Fatalf("article insert: %s %s", f.Type, f.Data)
	}

	// A fact: exactly the whitelisted columns plus tab_origin_id.
	id1 := db.queryInt(t, `INSERT INTO t_f_budget_fact (user_id, article_id, financial_center_id, amount, fact_date, description)
		VALUES (1, $1, 4, 12345678901, '2026-01-15', 'bread') RETURNING id`, art)
	f := c.protoNextNonPing(t, 10*time.Second)
	if f.Type != "fact_created" {
		t.Fatalf("fact insert: %s, want fact_created", f.Type)
	}
	protoExactData(t, f, fmt.Sprintf(`{"id":%d,"article_id":%d,"financial_center_id":4,"cost_center_id":null,"amount":12345678901,
		"fact_date":"2026-01-15","description":"bread","record_type":"fact","transfer_id":null,"tab_origin_id":null}`, id1, art))
	if !bytes.Contains(f.Data, []byte(`"amount":12345678901,`)) {
		t.Fatalf("amount not a JSON integer: %s", f.Data)
	}

	// A plan in a transaction with SET LOCAL, then a transaction without it
	// on the same connection: the setting does not leak.
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var id2 int64
	if _, err := tx.Exec(ctx, `SET LOCAL budget.tab_origin_id = 'tab-7'`); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `INSERT INTO t_f_budget_fact (user_id, article_id, amount, fact_date, record_type, transfer_id)
		VALUES (1, $1, 500, '2026-02-10', 'plan', 99) RETURNING id`, art).Scan(&id2); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f = c.protoNextNonPing(t, 10*time.Second)
	if f.Type != "plan_created" {
		t.Fatalf("plan insert: %s, want plan_created", f.Type)
	}
	protoExactData(t, f, fmt.Sprintf(`{"id":%d,"article_id":%d,"financial_center_id":null,"cost_center_id":null,"amount":500,
		"fact_date":"2026-02-10","description":null,"record_type":"plan","transfer_id":99,"tab_origin_id":"tab-7"}`, id2, art))

	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var id3 int64
	if err := tx.QueryRow(ctx, `INSERT INTO t_f_budget_fact (user_id, article_id, amount, fact_date)
		VALUES (2, $1, 0, '2026-03-31') RETURNING id`, art).Scan(&id3); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f = c.protoNextNonPing(t, 10*time.Second)
	if f.Type != "fact_created" || f.field(t, "tab_origin_id") != nil || f.field(t, "id") != float64(id3) {
		t.Fatalf("insert after the SET LOCAL transaction: %s %s, want fact_created with tab_origin_id null", f.Type, f.Data)
	}
	if _, ok := protoDecodeExact(t, f.Data)["tab_origin_id"]; !ok {
		t.Fatalf("tab_origin_id missing: %s", f.Data)
	}

	// Updates keep the record type's name; a plan updated with a tab id.
	db.exec(t, `UPDATE t_f_budget_fact SET amount = 7, description = 'rye' WHERE id = $1`, id1)
	f = c.protoNextNonPing(t, 10*time.Second)
	if f.Type != "fact_updated" {
		t.Fatalf("fact update: %s, want fact_updated", f.Type)
	}
	protoExactData(t, f, fmt.Sprintf(`{"id":%d,"article_id":%d,"financial_center_id":4,"cost_center_id":null,"amount":7,
		"fact_date":"2026-01-15","description":"rye","record_type":"fact","transfer_id":null,"tab_origin_id":null}`, id1, art))
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('budget.tab_origin_id', 'tab-8', true)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE t_f_budget_fact SET cost_center_id = 3 WHERE id = $1`, id2); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f = c.protoNextNonPing(t, 10*time.Second)
	if f.Type != "plan_updated" || f.field(t, "tab_origin_id") != "tab-8" || f.field(t, "cost_center_id") != float64(3) {
		t.Fatalf("plan update: %s %s, want plan_updated with tab-8", f.Type, f.Data)
	}

	// A single delete carries the row as it was (the app's client reads its
	// id), through the same whitelist, and the tab id.
	db.exec(t, `DELETE FROM t_f_budget_fact WHERE id = $1`, id1)
	f = c.protoNextNonPing(t, 10*time.Second)
	if f.Type != "fact_deleted" {
		t.Fatalf("fact delete: %s, want fact_deleted", f.Type)
	}
	protoExactData(t, f, fmt.Sprintf(`{"id":%d,"article_id":%d,"financial_center_id":4,"cost_center_id":null,"amount":7,
		"fact_date":"2026-01-15","description":"rye","record_type":"fact","transfer_id":null,"tab_origin_id":null}`, id1, art))

	// A DELETE of 2,500 rows (across partitions) in one statement: three
	// batch events listing every deleted id once.
	const bulk = 2500
	db.exec(t, `INSERT INTO t_f_budget_fact (user_id, article_id, amount, fact_date, description)
		SELECT 1, $1, i, DATE '2026-01-01' + (i % 70), 'bulk' FROM generate_series(1, $2) i`, art, bulk)
	created := c.protoTakeNonPing(t, bulk)
	for i, f := range created {
		if f.Type != "fact_created" {
			t.Fatalf("bulk insert frame %d: %s", i, f.Type)
		}
	}
	rows, err := db.pool.Query(ctx, `DELETE FROM t_f_budget_fact WHERE description = 'bulk' RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	var deleted []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		deleted = append(deleted, id)
	}
	if rows.Close(); rows.Err() != nil || len(deleted) != bulk {
		t.Fatalf("bulk delete: %v, %d rows", rows.Err(), len(deleted))
	}
	db.exec(t, `UPDATE t_d_article SET name = 'groceries' WHERE id = $1`, art)

	var listed []int64
	total := 0
	for i, want := range []int{1000, 1000, 500} {
		f := c.protoNextNonPing(t, 10*time.Second)
		if f.Type != "facts_batch_deleted" {
			t.Fatalf("batch frame %d: %s %.200s, want facts_batch_deleted", i, f.Type, f.Data)
		}
		var d struct {
			FactIDs      []int64          `json:"fact_ids"`
			Keys         []map[string]any `json:"keys"`
			DeletedCount int              `json:"deleted_count"`
		}
		if err := json.Unmarshal(f.Data, &d); err != nil {
			t.Fatalf("batch data: %v", err)
		}
		m := protoDecodeExact(t, f.Data)
		if !slices.Equal(protoKeys(m), []string{"deleted_count", "fact_ids", "keys", "tab_origin_id"}) || m["tab_origin_id"] != nil {
			t.Fatalf("batch event keys %v", protoKeys(m))
		}
		if d.DeletedCount != want || len(d.FactIDs) != want || len(d.Keys) != want {
			t.Fatalf("batch %d: deleted_count %d, %d ids, %d keys; want %d", i, d.DeletedCount, len(d.FactIDs), len(d.Keys), want)
		}
		for j, k := range d.Keys {
			if !slices.Equal(protoKeys(k), []string{"fact_date", "id"}) || k["id"] != float64(d.FactIDs[j]) {
				t.Fatalf("batch %d key %d: %v, want {id: %d, fact_date}", i, j, k, d.FactIDs[j])
			}
		}
		listed = append(listed, d.FactIDs...)
		total += d.DeletedCount
	}
	slices.Sort(listed)
	slices.Sort(deleted)
	if total != bulk || !slices.Equal(listed, deleted) {
		t.Fatalf("batch events list %d ids (deleted_count %d), want the %d deleted ids once each", len(listed), total, bulk)
	}
	// Nothing else came for the delete: the next frame is the article update.
	f = c.protoNextNonPing(t, 10*time.Second)
	if f.Type != "article_updated" || f.field(t, "name") != "groceries" || f.field(t, "type") != "expense" {
		t.Fatalf("after the batch: %s %s, want article_updated", f.Type, f.Data)
	}
	if ks := protoKeys(protoDecodeExact(t, f.Data)); !slices.Equal(ks, []string{"code", "created_at", "description", "id", "is_active",
		"name", "parent_id", "type", "updated_at", "user_id"}) {
		t.Fatalf("article_updated keys %v, want every column", ks)
	}
}
