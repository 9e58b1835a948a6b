package main

// Browser tests: a real Chromium loads testdata/app.html through a real
// nginx (configured with the locations we ship, nginxLocations) in front of
// the real gateway, and the page's client (testdata/rt.js) behaves as the
// app's budgetWSClient.js does: token from /ws/token with the cookie, the
// WebSocket, pings, reconnect with backoff, long-poll fallback, disable on
// 401. Run them with
//
//	go test -race -count=1 -run Browser ./cmd/gateway/
//
// They need Debian's chromium and nginx (apt-get install chromium nginx);
// without them they fail, except under -short, which skips them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/config"
)

const (
	chromiumPath = "/usr/bin/chromium"

	// browserSecret is the backend's JWT_SECRET in these tests.
	browserSecret = "browser-test-secret: not the one in production"
	// browserUser is the user id in the access_token cookie.
	browserUser = 42
)

// pageDefaults make the client's clocks short: ping every 500 ms, drop the
// socket after 3 s without a pong or 5 s without any frame, reconnect after
// 100 ms doubling up to 1 s, fall back to polling after 5 failed opens, polls
// held at most 2 s.
var pageDefaults = map[string]string{
	"ping": "500", "pong": "3000", "stale": "5000", "backoff": "100", "backoffmax": "1000",
	"attempts": "5", "polltimeout": "2",
}

// browserGatewayEnv is the gateway's configuration in these tests: auth on,
// the gateway mints the WebSocket tokens, server pings every second.
var browserGatewayEnv = []string{
	"GATEWAY_JWT_SECRET=" + browserSecret,
	"GATEWAY_INSECURE_NO_AUTH=false",
	"GATEWAY_MINT_WS_TOKEN=true",
	"GATEWAY_PING_INTERVAL=1s",
}

// A row inserted with SQL appears on the page over the WebSocket; client
// pings get pongs, check_online is answered, /ws/status counts the tab, and
// /ws/disconnect closes it (1000), after which the client reconnects.
// Chromium offers permessage-deflate; with GATEWAY_WS_COMPRESSION on, the
// gateway agrees (through nginx), and the page reads the events it
// compressed once for every such client.
func TestBrowserCompressedEvents(t *testing.T) {
	env := newBrowserEnvWith(t, []string{"GATEWAY_WS_COMPRESSION=true"})
	p := env.open(t, env.pageURL())
	p.waitFor(t, "the socket to open", `__rt.state === 'open'`, 10*time.Second)
	ext, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`__rt.ws.extensions`))
	if err != nil {
		t.Fatalf("read the socket's extensions: %v", err)
	}
	if !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("the browser's socket negotiated %q, want permessage-deflate", ext)
	}
	desc := strings.Repeat("groceries ", 2000)
	id := env.db.queryInt(t, `INSERT INTO facts (amount, fact_date, description) VALUES (1500, '2026-01-05', $1) RETURNING id`, desc)
	p.waitFor(t, "the fact's row", fmt.Sprintf(`document.querySelector('#events li[data-row="%d"]')`, id), 10*time.Second)
	rows := p.rows(t)
	want := fmt.Sprintf("fact %d created: 1500 on 2026-01-05 (%s)", id, desc)
	if len(rows) != 1 || rows[0].Type != "budget_fact_created" || rows[0].Via != "ws" || rows[0].Text != want {
		t.Fatalf("rows %.300v, want one budget_fact_created via ws with the whole description", rows)
	}
}

func TestBrowserEventOverWebSocket(t *testing.T) {
	env := newBrowserEnv(t)
	p := env.open(t, env.pageURL())
	p.waitFor(t, "the socket to open", `__rt.state === 'open'`, 10*time.Second)

	s := p.snapshot(t)
	if s.Transport != "ws" || s.UserID != browserUser || s.Failures != 0 || s.TokenFetches != 1 {
		t.Fatalf("after connecting: %+v, want transport ws, user_id %d, no failure, one token fetch", s, browserUser)
	}
	if _, err := checkUUID(s.ConnectionID); err != nil {
		t.Fatalf("connection_id %q: %v", s.ConnectionID, err)
	}

	id := env.db.queryInt(t, `INSERT INTO facts (amount, fact_date, description) VALUES (1500, '2026-01-05', 'bread') RETURNING id`)
	p.waitFor(t, "the fact's row", fmt.Sprintf(`document.querySelector('#events li[data-row="%d"]')`, id), 10*time.Second)
	rows := p.rows(t)
	if len(rows) != 1 {
		t.Fatalf("rows %+v, want one", rows)
	}
	want := fmt.Sprintf("fact %d created: 1500 on 2026-01-05 (bread)", id)
	if r := rows[0]; r.Type != "budget_fact_created" || r.Via != "ws" || r.ID == "" || r.Text != want {
		t.Fatalf("row %+v, want type budget_fact_created via ws with an id and text %q", r, want)
	}

	// The client's pings are answered, and so is check_online; the
	// server's pings arrive (every second here).
	p.waitFor(t, "a pong and a server ping", `__rt.pongs > 0 && __rt.serverPings > 0`, 5*time.Second)
	p.eval(t, `__rt.checkOnline()`)
	p.waitFor(t, "online_status", `__rt.online === true`, 5*time.Second)

	// /ws/status counts this tab; /ws/disconnect closes it with 1000.
	var status struct {
		Total  *int `json:"total_connections"`
		User   *int `json:"user_connections"`
		Limits struct {
			PerUser int `json:"max_per_user"`
			Total   int `json:"max_total"`
		} `json:"limits"`
	}
	env.cookieJSON(t, http.MethodGet, "/api/v1/budget/ws/status", nil, http.StatusOK, &status)
	if status.Total == nil || status.User == nil || *status.Total != 1 || *status.User != 1 || status.Limits.PerUser < 1 || status.Limits.Total < 1 {
		t.Fatalf("ws/status = %+v, want 1 connection of this user and the limits", status)
	}
	var disc struct {
		Status string `json:"status"`
	}
	env.cookieJSON(t, http.MethodPost, "/api/v1/budget/ws/disconnect", map[string]string{"connection_id": s.ConnectionID}, http.StatusOK, &disc)
	if disc.Status != "disconnected" {
		t.Fatalf("ws/disconnect of the page's connection: status %q, want disconnected", disc.Status)
	}
	p.waitFor(t, "the client to reconnect", `__rt.opens === 2 && __rt.state === 'open'`, 10*time.Second)
	s2 := p.snapshot(t)
	if len(s2.Closes) != 1 || s2.Closes[0].Code != 1000 || !s2.Closes[0].Opened {
		t.Fatalf("closes %+v, want one close with code 1000 after open", s2.Closes)
	}
	if s2.ConnectionID == s.ConnectionID || s2.TokenFetches != 2 {
		t.Fatalf("after reconnecting: connection %s (was %s), %d token fetches; want a new connection and a fresh token",
			s2.ConnectionID, s.ConnectionID, s2.TokenFetches)
	}
	disc.Status = ""
	env.cookieJSON(t, http.MethodPost, "/api/v1/budget/ws/disconnect", map[string]string{"connection_id": "00000000-0000-4000-8000-000000000000"}, http.StatusOK, &disc)
	if disc.Status != "not_found" {
		t.Fatalf("ws/disconnect of an unknown connection: status %q, want not_found", disc.Status)
	}

	// The new socket delivers too.
	id2 := env.db.insertFact(t, 7, "2026-02-01")
	p.waitFor(t, "the second fact's row", fmt.Sprintf(`document.querySelector('#events li[data-row="%d"]')`, id2), 10*time.Second)

	// /poll, like the routes above, is routed to the gateway by the shipped
	// locations (checked by cookieJSON).
	var poll struct {
		Events     []json.RawMessage `json:"events"`
		ServerTime float64           `json:"server_time"`
	}
	env.cookieJSON(t, http.MethodGet, "/api/v1/budget/poll?since=0&timeout=1", nil, http.StatusOK, &poll)
	if poll.ServerTime <= 0 {
		t.Fatalf("poll through nginx: server_time %v", poll.ServerTime)
	}
}

// The gateway is restarted under the page: the client reconnects by itself
// (refetching its token, with backoff while the gateway is down) and a row
// inserted afterwards appears. A client that resumes with ?last_event_id=
// also gets the row committed while no gateway ran, exactly once.
func TestBrowserRecoversFromGatewayRestart(t *testing.T) {
	env := newBrowserEnv(t)
	// attempts=100: stay on the WebSocket however long the restart takes.
	plain := env.open(t, env.pageURL("attempts=100"))
	resume := env.open(t, env.pageURL("attempts=100", "resume=1"))
	for _, p := range []*browserPage{plain, resume} {
		p.waitFor(t, "the socket to open", `__rt.state === 'open'`, 10*time.Second)
	}
	before := env.db.insertFact(t, 1, "2026-01-01")
	for _, p := range []*browserPage{plain, resume} {
		p.waitFor(t, "the first row", fmt.Sprintf(`document.querySelector('#events li[data-row="%d"]')`, before), 10*time.Second)
	}
	first := plain.snapshot(t).ConnectionID

	env.gw.stop(t)
	for _, p := range []*browserPage{plain, resume} {
		p.waitFor(t, "the socket to close", `__rt.closes.length > 0 && __rt.state !== 'open'`, 10*time.Second)
	}
	// The app writes on while no gateway runs.
	during := env.db.insertFact(t, 2, "2026-01-02")

	env.gw = startGatewayAt(t, env.db, env.gwAddr, browserGatewayEnv...)
	for _, p := range []*browserPage{plain, resume} {
		p.waitFor(t, "the client to reconnect", `__rt.opens === 2 && __rt.state === 'open'`, 15*time.Second)
	}
	after := env.db.insertFact(t, 3, "2026-01-03")
	for _, p := range []*browserPage{plain, resume} {
		p.waitFor(t, "the row inserted after the restart", fmt.Sprintf(`document.querySelector('#events li[data-row="%d"]')`, after), 10*time.Second)
	}

	ps := plain.snapshot(t)
	if ps.Transport != "ws" || ps.ConnectionID == first || ps.Closes[0].Code != 1001 {
		t.Fatalf("plain client after restart: %+v; want transport ws, a new connection, first close 1001 (going away)", ps)
	}
	if got, want := rowIDs(plain.rows(t)), []string{rowID(before), rowID(after)}; !slices.Equal(got, want) {
		// Without last_event_id a client gets what commits after its
		// handshake, so the row committed while down is not sent.
		t.Fatalf("plain client rows %v, want %v", got, want)
	}
	rows := resume.rows(t)
	if got, want := rowIDs(rows), []string{rowID(before), rowID(during), rowID(after)}; !slices.Equal(got, want) {
		t.Fatalf("resuming client rows %v, want %v (each once, in order)", got, want)
	}
	assertUniqueEventIDs(t, rows)
}

// With the WebSocket route refused at nginx the client falls back to
// long-polling /poll, and every event of a burst, and of commits that land
// while a poll waits empty or between two polls, appears exactly once, in
// commit order.
func TestBrowserLongPollFallback(t *testing.T) {
	env := newBrowserEnv(t, withBlockedWS())
	p := env.open(t, env.pageURL("attempts=3", "backoffmax=400"))
	p.waitFor(t, "the fallback to polling", `__rt.transport === 'poll' && __rt.pollInFlight`, 15*time.Second)
	s := p.snapshot(t)
	if s.Failures < 3 || s.Opens != 0 || len(s.Closes) < 3 || s.Closes[0].Opened {
		t.Fatalf("before the fallback: %+v; want 3 failed opens and no socket", s)
	}

	// A burst of single-row transactions.
	var want []string
	for i := range 20 {
		want = append(want, rowID(env.db.insertFact(t, i, "2026-01-10")))
	}
	p.waitFor(t, "the burst", `__rt.events.length >= 20`, 15*time.Second)

	// Commits while a poll is held open with nothing to say, spaced so
	// that some land in a wait and some in the 100 ms between two polls.
	p.waitFor(t, "a poll waiting empty", `__rt.events.length >= 20 && __rt.pollInFlight && Date.now() - __rt.pollStartedAt > 300`, 10*time.Second)
	for i := range 5 {
		want = append(want, rowID(env.db.insertFact(t, 100+i, "2026-01-11")))
		time.Sleep(time.Duration(60+i*40) * time.Millisecond) // vary where the commits land, not a wait for state
	}
	// Three rows in one transaction.
	r, err := env.db.pool.Query(context.Background(),
		`INSERT INTO facts (amount, fact_date) SELECT g, '2026-01-12' FROM generate_series(200, 202) g RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var id int64
		if err := r.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, rowID(id))
	}
	if r.Close(); r.Err() != nil {
		t.Fatal(r.Err())
	}
	// The end marker: nothing may follow it.
	env.db.exec(t, `INSERT INTO articles (name) VALUES ('end')`)
	p.waitFor(t, "the end marker", `document.querySelector('#events li[data-type="article_created"]')`, 15*time.Second)
	polls := p.snapshot(t).Polls
	p.waitFor(t, "one more poll", fmt.Sprintf(`__rt.polls > %d`, polls), 10*time.Second)

	rows := p.rows(t)
	if n := len(rows); n != len(want)+1 {
		t.Fatalf("%d rows, want %d facts and the marker: %v", n, len(want), rowIDs(rows))
	}
	if got := rowIDs(rows[:len(want)]); !slices.Equal(got, want) {
		t.Fatalf("fact rows %v,\nwant %v (each once, in commit order)", got, want)
	}
	if last := rows[len(rows)-1]; last.Type != "article_created" {
		t.Fatalf("last row %+v, want the marker", last)
	}
	for _, r := range rows {
		if r.Via != "poll" || (r.Type != "budget_fact_created" && r.Type != "article_created") {
			t.Fatalf("row %+v: want a *_created event that came by poll", r)
		}
	}
	assertUniqueEventIDs(t, rows)
}

// An expired, forged, missing or wrong-type token gets HTTP 403 on the
// upgrade through nginx, and a fresh token from /ws/token works. In the
// page, a first open with an expired token fails (1006), and the client
// retries with a fresh token and works. A bad cookie (401 from /ws/token or
// /poll) disables the client for good. The token never reaches nginx's
// access log.
func TestBrowserExpiredTokenRefused(t *testing.T) {
	env := newBrowserEnv(t)
	now := time.Now()
	expired := signHS256(t, browserSecret, jwt.MapClaims{"sub": strconv.Itoa(browserUser), "type": "ws",
		"iat": now.Add(-10 * time.Minute).Unix(), "exp": now.Add(-5 * time.Minute).Unix()})
	forged := signHS256(t, "another secret", jwt.MapClaims{"sub": strconv.Itoa(browserUser), "type": "ws",
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()})
	cookieAsWS := browserCookie(t, browserSecret, browserUser) // no type "ws"

	wsBase := "ws" + strings.TrimPrefix(env.site, "http") + "/api/v1/budget/ws"
	for name, query := range map[string]string{
		"expired": "?token=" + expired, "forged": "?token=" + forged, "cookie token": "?token=" + cookieAsWS,
		"empty": "?token=", "missing": "",
	} {
		conn, resp, err := websocket.DefaultDialer.Dial(wsBase+query, nil)
		if err == nil {
			conn.Close()
			t.Fatalf("%s token: the upgrade succeeded, want 403", name)
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s token: %v (response %v), want HTTP 403", name, err, resp)
		}
		if srv := resp.Header.Get("Server"); !strings.HasPrefix(srv, "nginx") {
			t.Fatalf("%s token: Server %q, want the answer to pass through nginx", name, srv)
		}
	}

	// A fresh token from /ws/token (through nginx, with the cookie) works.
	var tok struct {
		Token string `json:"token"`
	}
	env.cookieJSON(t, http.MethodPost, "/api/v1/budget/ws/token", nil, http.StatusOK, &tok)
	conn, resp, err := websocket.DefaultDialer.Dial(wsBase+"?token="+url.QueryEscape(tok.Token), nil)
	if err != nil {
		t.Fatalf("dial with a fresh token: %v (response %v)", err, resp)
	}
	defer conn.Close()
	var hello struct {
		Type string `json:"type"`
		Data struct {
			UserID       int64  `json:"user_id"`
			ConnectionID string `json:"connection_id"`
		} `json:"data"`
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := conn.ReadJSON(&hello); err != nil {
		t.Fatalf("first frame: %v", err)
	}
	if hello.Type != "connected" || hello.Data.UserID != browserUser || hello.Data.ConnectionID == "" {
		t.Fatalf("first frame %+v, want connected for user %d with a connection id", hello, browserUser)
	}
	conn.Close()
	// /ws/token needs the cookie.
	req, _ := http.NewRequest(http.MethodPost, env.site+"/api/v1/budget/ws/token", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("ws/token without a cookie: %v %v, want 401", resp, err)
	} else {
		resp.Body.Close()
	}

	// Pages with a bad cookie disable themselves: on /ws/token, and on /poll.
	// They get a browser context (cookie jar) of their own.
	bad := browserCookie(t, "another secret", browserUser)
	tokenPage := env.openIsolated(t, env.pageURL(), bad)
	pollPage := env.openIsolated(t, env.pageURL("start=poll"), bad)
	tokenPage.waitFor(t, "the client to disable itself", `__rt.state === 'disabled'`, 10*time.Second)
	pollPage.waitFor(t, "the client to disable itself", `__rt.state === 'disabled'`, 10*time.Second)

	// The page: its first open uses the expired token and fails; it then
	// fetches a fresh one and connects.
	p := env.open(t, env.pageURL()+"#firsttoken="+url.QueryEscape(expired))
	p.waitFor(t, "the client to recover", `__rt.state === 'open'`, 10*time.Second)
	s := p.snapshot(t)
	if len(s.Closes) != 1 || s.Closes[0].Opened || s.Closes[0].Code != 1006 || s.TokenFetches != 1 || s.Opens != 1 || s.Transport != "ws" {
		t.Fatalf("client %+v: want one failed open (1006), then one token fetch and one open", s)
	}
	id := env.db.insertFact(t, 5, "2026-03-05")
	p.waitFor(t, "the row", fmt.Sprintf(`document.querySelector('#events li[data-row="%d"]')`, id), 10*time.Second)

	// The disabled pages did not retry meanwhile.
	for name, bp := range map[string]*browserPage{"ws/token": tokenPage, "poll": pollPage} {
		s := bp.snapshot(t)
		if s.State != "disabled" || !strings.Contains(s.DisabledReason, "401") || s.Opens != 0 || s.Polls != 0 || s.TokenFetches > 1 {
			t.Fatalf("page disabled by %s: %+v; want disabled on 401 without retrying", name, s)
		}
	}

	// The WebSocket location logs nothing: no token in the access log.
	log := env.nginx.accessLog()
	if !strings.Contains(log, "/app.html") {
		t.Fatalf("access log has no request for the page, so it proves nothing:\n%s", log)
	}
	for _, secret := range []string{"token=", expired, tok.Token} {
		if strings.Contains(log, secret) {
			t.Fatalf("nginx's access log holds a ws token (%.20s...):\n%s", secret, log)
		}
	}
}

// browserEnv is a gateway on a fixed port, nginx in front of it and a
// Chromium with the user's access_token cookie for nginx's origin.
type browserEnv struct {
	db      *testDB
	gw      *gw
	gwAddr  string // the gateway's host:port, fixed so that a restarted gateway is where nginx looks
	site    string // nginx's base URL: the page's origin
	nginx   *nginxServer
	browser context.Context
	cookie  string // the access_token
}

func newBrowserEnv(t *testing.T, nginxOpts ...nginxOption) *browserEnv {
	t.Helper()
	return newBrowserEnvWith(t, nil, nginxOpts...)
}

// newBrowserEnvWith is newBrowserEnv with more gateway settings.
func newBrowserEnvWith(t *testing.T, gwEnv []string, nginxOpts ...nginxOption) *browserEnv {
	t.Helper()
	requireBrowser(t)
	env := &browserEnv{db: newTestDB(t), gwAddr: pickAddr(t)}
	env.gw = startGatewayAt(t, env.db, env.gwAddr, append(slices.Clone(browserGatewayEnv), gwEnv...)...)
	env.nginx = startNginxServer(t, env.gwAddr, nginxOpts...)
	env.site = env.nginx.base
	env.browser = startBrowser(t)
	env.cookie = browserCookie(t, browserSecret, browserUser)
	setBrowserCookie(t, env.browser, env.site, env.cookie)
	return env
}

// requireBrowser skips under -short and fails when chromium or nginx is
// missing, saying how to install them.
func requireBrowser(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test: skipped under -short")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("chromium is needed for the browser tests and is missing (%v): on Debian run `apt-get install chromium` "+
			"(or bash .ci/run, which installs it); use -short to skip the browser tests", err)
	}
	requireNginx(t)
}

// startGatewayAt is startGateway on a fixed address, so that a gateway
// restarted with the same address is found by the proxy in front of it.
func startGatewayAt(t *testing.T, db *testDB, addr string, extra ...string) *gw {
	t.Helper()
	cfg, err := config.Load(db.environ(append([]string{"GATEWAY_ADDR=" + addr}, extra...)...))
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	var ln net.Listener
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			t.Fatalf("listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gw{base: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- serve(ctx, cfg, testLogger(), ln) }()
	t.Cleanup(func() { g.stop(t) })
	g.waitReady(t)
	return g
}

// startBrowser starts a headless Chromium with a fresh profile; it is
// closed when the test ends. Chromium's own start can fail for reasons that
// have nothing to do with the gateway (its zygote failing to fork a helper
// process on a loaded machine), so a failed start is retried with a fresh
// profile, a bounded number of times.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	const attempts = 3
	for i := 1; ; i++ {
		ctx, stop, err := launchBrowser(t.TempDir())
		if err == nil {
			t.Cleanup(stop)
			return ctx
		}
		stop()
		if i == attempts {
			t.Fatalf("start %s (%d attempts): %v", chromiumPath, attempts, err)
		}
		t.Logf("start %s, attempt %d: %v; retrying", chromiumPath, i, err)
	}
}

func launchBrowser(profile string) (context.Context, func(), error) {
	// Chromium keeps its singleton socket in a directory of its own under
	// TMPDIR, removed only when it exits gracefully; a test stops it with a
	// kill, which left one directory in /tmp per browser. Its TMPDIR is a
	// directory of ours, removed with the browser. Not the profile: the
	// socket's path must stay under the 108 bytes of a Unix socket address,
	// and a test's temporary directory is named after the test.
	tmp, err := os.MkdirTemp("", "chromium-")
	if err != nil {
		return nil, func() {}, fmt.Errorf("make Chromium's TMPDIR: %w", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.UserDataDir(profile),
		chromedp.Env("TMPDIR="+tmp),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// Every tab keeps full-speed timers: the client's clocks are short.
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	stop := func() {
		cancel()
		cancelAlloc() // returns once the browser has exited
		os.RemoveAll(tmp)
	}
	if err := chromedp.Do(ctx); err != nil {
		return nil, stop, err
	}
	return ctx, stop, nil
}

// setBrowserCookie sets the access_token cookie for site in ctx's browser context.
func setBrowserCookie(t *testing.T, ctx context.Context, site, value string) {
	t.Helper()
	_, err := chromedp.Call(ctx, network.SetCookie, network.SetCookieParams{
		Name: "access_token", Value: value, URL: site + "/", Path: "/", HTTPOnly: new(true),
	})
	if err != nil {
		t.Fatalf("set cookie: %v", err)
	}
}

// pageURL is app.html on nginx with pageDefaults, changed by overrides
// ("key=value").
func (env *browserEnv) pageURL(overrides ...string) string {
	q := url.Values{}
	for k, v := range pageDefaults {
		q.Set(k, v)
	}
	for _, o := range overrides {
		k, v, _ := strings.Cut(o, "=")
		q.Set(k, v)
	}
	return env.site + "/app.html?" + q.Encode()
}

// browserPage is one tab running app.html.
type browserPage struct {
	ctx     context.Context
	console *procOutput
}

// open loads url in a new tab of the env's browser and waits for the client.
func (env *browserEnv) open(t *testing.T, url string) *browserPage {
	t.Helper()
	ctx, cancel := chromedp.NewContext(env.browser)
	t.Cleanup(cancel)
	return loadBrowserPage(t, ctx, url)
}

// openIsolated loads url in a new tab with a browser context (cookie jar) of
// its own, holding the given access_token.
func (env *browserEnv) openIsolated(t *testing.T, url, cookie string) *browserPage {
	t.Helper()
	ctx, cancel := chromedp.NewContext(env.browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // opens the tab
		t.Fatalf("open tab: %v", err)
	}
	setBrowserCookie(t, ctx, env.site, cookie)
	return loadBrowserPage(t, ctx, url)
}

func loadBrowserPage(t *testing.T, ctx context.Context, url string) *browserPage {
	t.Helper()
	p := &browserPage{ctx: ctx, console: &procOutput{}}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			fmt.Fprintf(p.console, "%s %s\n", m.Time.Format("15:04:05.000"), m)
		}
	}()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("navigate to %s: %v", url, err)
	}
	p.waitFor(t, "the client to start", `window.__rt !== undefined`, 10*time.Second)
	return p
}

// waitFor polls the JavaScript expression until it is truthy.
func (p *browserPage) waitFor(t *testing.T, what, expr string, timeout time.Duration) {
	t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		state, _ := chromedp.Run(p.ctx, chromedp.Evaluate[[]byte](`window.__rt ? JSON.stringify(__rt.snapshot(), null, 1) : "no client"`))
		t.Fatalf("waiting for %s (%s): %v\nclient state: %s\nconsole:\n%s", what, expr, err, state, tailLines(p.console.String(), 60))
	}
}

// eval runs JavaScript in the page.
func (p *browserPage) eval(t *testing.T, expr string) {
	t.Helper()
	if err := chromedp.Do(p.ctx, chromedp.Evaluate[chromedp.Void](expr)); err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
}

// clientState is what window.__rt.snapshot() returns.
type clientState struct {
	State          string `json:"state"`
	Transport      string `json:"transport"`
	DisabledReason string `json:"disabledReason"`
	UserID         int64  `json:"userId"`
	ConnectionID   string `json:"connectionId"`
	Online         *bool  `json:"online"`
	Failures       int    `json:"failures"`
	Opens          int    `json:"opens"`
	TokenFetches   int    `json:"tokenFetches"`
	Closes         []struct {
		Code   int    `json:"code"`
		Reason string `json:"reason"`
		Opened bool   `json:"opened"`
	} `json:"closes"`
	Pongs       int      `json:"pongs"`
	ServerPings int      `json:"serverPings"`
	Polls       int      `json:"polls"`
	Events      int      `json:"events"`
	Log         []string `json:"log"`
}

func (p *browserPage) snapshot(t *testing.T) clientState {
	t.Helper()
	b, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`JSON.stringify(__rt.snapshot())`))
	if err != nil {
		t.Fatalf("read client state: %v", err)
	}
	var s clientState
	if err := json.Unmarshal([]byte(b), &s); err != nil {
		t.Fatalf("client state %s: %v", b, err)
	}
	return s
}

// pageRow is one rendered event: <li data-id data-type data-row data-via>.
type pageRow struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Row  string `json:"row"` // the table row's id
	Via  string `json:"via"`
	Text string `json:"text"`
}

func (p *browserPage) rows(t *testing.T) []pageRow {
	t.Helper()
	b, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`JSON.stringify(Array.from(document.querySelectorAll('#events li'),
		(li) => ({id: li.dataset.id, type: li.dataset.type, row: li.dataset.row || '', via: li.dataset.via, text: li.textContent})))`))
	if err != nil {
		t.Fatalf("read rows: %v", err)
	}
	var rows []pageRow
	if err := json.Unmarshal([]byte(b), &rows); err != nil {
		t.Fatalf("rows %s: %v", b, err)
	}
	return rows
}

func rowIDs(rows []pageRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.Row
	}
	return out
}

func rowID(id int64) string { return strconv.FormatInt(id, 10) }

// assertUniqueEventIDs checks that no event was rendered twice.
func assertUniqueEventIDs(t *testing.T, rows []pageRow) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range rows {
		if r.ID == "" || seen[r.ID] {
			t.Fatalf("event id %q missing or rendered twice in %+v", r.ID, rows)
		}
		seen[r.ID] = true
	}
}

// cookieJSON calls a cookie route through nginx with the user's cookie and
// decodes the JSON answer.
func (env *browserEnv) cookieJSON(t *testing.T, method, path string, body any, wantStatus int, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, env.site+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.AddCookie(&http.Cookie{Name: "access_token", Value: env.cookie})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if loc := resp.Header.Get("X-Test-Location"); loc != "" {
		t.Fatalf("%s %s went through nginx's %s location: the shipped locations (nginxLocations) must route it to the gateway", method, path, loc)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, wantStatus, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s %s: %v in %s", method, path, err, b)
	}
}

// signHS256 signs claims with HS256, as the backend does.
func signHS256(t *testing.T, secret string, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// accessToken is the backend's access_token cookie: user_id (a number),
// telegram_id, 7 days.
func browserCookie(t *testing.T, secret string, userID int) string {
	now := time.Now()
	return signHS256(t, secret, jwt.MapClaims{"user_id": userID, "telegram_id": 1000 + userID,
		"iat": now.Unix(), "exp": now.Add(7 * 24 * time.Hour).Unix()})
}

// checkUUID checks the 8-4-4-4-12 hex form.
func checkUUID(s string) (string, error) {
	parts := strings.Split(s, "-")
	if len(parts) != 5 {
		return "", fmt.Errorf("not a UUID")
	}
	for i, n := range []int{8, 4, 4, 4, 12} {
		if len(parts[i]) != n {
			return "", fmt.Errorf("not a UUID")
		}
		if _, err := strconv.ParseUint(parts[i], 16, 64); err != nil {
			return "", fmt.Errorf("not a UUID: %w", err)
		}
	}
	return s, nil
}
