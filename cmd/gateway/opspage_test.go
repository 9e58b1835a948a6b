package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
)

// The ops page's screenshot in the README is docs/ops.png, regenerated with
//
//	GATEWAY_UPDATE_SCREENSHOT=1 go test ./cmd/gateway -run TestOpsPageInBrowser
const opsScreenshot = "../../docs/ops.png"

const opsToken = "ops-test-token"

// get returns the status and body of a GET with extra headers.
func opsGet(t *testing.T, u string, header ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if resp.Header.Get("Content-Type") != "text/event-stream" { // a stream would not end
		_, _ = io.Copy(&b, resp.Body)
	}
	return resp.StatusCode, b.String(), resp.Header
}

// /ops, /ops/stats and /ops/events are refused without the ops token (or,
// without one configured, the app's access token), whatever else is sent;
// open only when the whole gateway runs without authentication.
func TestOpsAuth(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	secret := "ops-auth-test-secret"
	access := browserCookie(t, secret, 7)
	wsToken := signHS256(t, secret, jwt.MapClaims{"sub": "7", "type": "ws", "exp": time.Now().Add(time.Minute).Unix()})

	withToken := startGateway(t, db, "GATEWAY_OPS_TOKEN="+opsToken, "GATEWAY_JWT_SECRET="+secret, "GATEWAY_INSECURE_NO_AUTH=false")
	withJWT := startGateway(t, db, "GATEWAY_JWT_SECRET="+secret, "GATEWAY_INSECURE_NO_AUTH=false")
	open := startGateway(t, db)

	for _, path := range []string{"/ops", "/ops/stats", "/ops/events"} {
		for name, h := range map[string][]string{
			"nothing":             nil,
			"wrong token":         {"Authorization", "Bearer wrong"},
			"the app's token":     {"Authorization", "Bearer " + access},
			"a WebSocket token":   {"Authorization", "Bearer " + wsToken},
			"the token as cookie": {"Cookie", "rtgw_ops=wrong"},
		} {
			if code, body, _ := opsGet(t, withToken.base+path, h...); code != http.StatusUnauthorized {
				t.Errorf("ops token set, %s %s: status %d, want 401: %.200s", path, name, code, body)
			}
		}
		for _, h := range [][]string{{"Authorization", "Bearer " + opsToken}, {"Cookie", "rtgw_ops=" + opsToken}} {
			if code, body, _ := opsGet(t, withToken.base+path, h...); code != http.StatusOK {
				t.Errorf("ops token set, %s with %s: status %d, want 200: %.200s", path, h[0], code, body)
			}
		}
		for name, h := range map[string][]string{"nothing": nil, "a WebSocket token": {"Authorization", "Bearer " + wsToken}} {
			if code, _, _ := opsGet(t, withJWT.base+path, h...); code != http.StatusUnauthorized {
				t.Errorf("JWT only, %s with %s: status %d, want 401", path, name, code)
			}
		}
		if code, _, _ := opsGet(t, withJWT.base+path, "Cookie", "access_token="+access); code != http.StatusOK {
			t.Errorf("JWT only, %s with the access_token cookie: status %d, want 200", path, code)
		}
		if code, _, _ := opsGet(t, open.base+path); code != http.StatusOK {
			t.Errorf("no authentication, %s: status %d, want 200", path, code)
		}
	}
	// ?token= on /ops sets the cookie and sends the browser back to /ops,
	// so the token leaves the address bar; a wrong one is refused.
	code, _, h := opsGet(t, withToken.base+"/ops?token="+url.QueryEscape(opsToken))
	cookie := h.Get("Set-Cookie")
	if code != http.StatusSeeOther || h.Get("Location") != "/ops" || !strings.Contains(cookie, "rtgw_ops="+opsToken) ||
		!strings.Contains(cookie, "HttpOnly") || !strings.Contains(cookie, "SameSite=Strict") || !strings.Contains(cookie, "Path=/ops") {
		t.Errorf("/ops?token=: status %d, Location %q, Set-Cookie %q; want 303 to /ops with an HttpOnly, strict cookie for /ops", code, h.Get("Location"), cookie)
	}
	if code, _, h := opsGet(t, withToken.base+"/ops?token=wrong"); code != http.StatusUnauthorized || h.Get("Set-Cookie") != "" {
		t.Errorf("/ops?token=wrong: status %d, Set-Cookie %q; want 401 and no cookie", code, h.Get("Set-Cookie"))
	}
	// The page may load nothing from elsewhere.
	if _, _, h := opsGet(t, open.base+"/ops"); !strings.Contains(h.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("/ops Content-Security-Policy %q, want default-src 'none'", h.Get("Content-Security-Policy"))
	}
}

// The ops page in headless Chromium: opened with the token, it shows the
// connections of each transport, the events streaming in (without their
// rows), the rate chart, the delivery lag and the LISTEN state, all live;
// without the token it gets nothing. It also takes the README's screenshot.
func TestOpsPageInBrowser(t *testing.T) {
	requireBrowser(t)
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_OPS_TOKEN="+opsToken)
	browser := startBrowser(t)

	// Without the token: a 401, no page.
	refused, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	defer cancel()
	if err := chromedp.Do(refused, chromedp.Navigate(g.base+"/ops")); err != nil {
		t.Fatalf("open /ops without the token: %v", err)
	}
	body, err := chromedp.Run(refused, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "ops token is required") {
		t.Fatalf("/ops without the token shows %q, want the refusal", body)
	}
	if hasPage, err := chromedp.Run(refused, chromedp.Evaluate[bool](`!!document.getElementById('conn-ws')`)); err != nil || hasPage {
		t.Fatalf("/ops without the token rendered the page (%v)", err)
	}

	// Clients of every transport.
	for range 3 {
		dialWS(t, g, "")
	}
	sse := dialSSE(t, g, "", nil)
	pollCtx, stopPolls := context.WithCancel(context.Background())
	defer stopPolls()
	go func() {
		// since is an hour ahead: each poll waits its whole 30 s.
		for pollCtx.Err() == nil {
			req, _ := http.NewRequestWithContext(pollCtx, http.MethodGet, g.base+"/api/v1/budget/poll?since="+fmt.Sprint(time.Now().Add(time.Hour).Unix())+"&timeout=30", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			resp.Body.Close()
		}
	}()

	ctx, cancel := chromedp.NewContext(browser)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 900), chromedp.Navigate(g.base+"/ops?token="+url.QueryEscape(opsToken))); err != nil {
		t.Fatalf("open /ops with the token: %v", err)
	}
	wait := func(what, expr string) {
		t.Helper()
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
		if err != nil {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({ops: window.__ops, text: document.body.innerText.slice(0, 2000)})`))
			t.Fatalf("waiting for %s (%s): %v\npage: %s", what, expr, err, state)
		}
	}
	wait("the page's first numbers", `window.__ops && __ops.updates > 0 && __ops.streamOpen`)
	if search, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.pathname + location.search`)); err != nil || search != "/ops" {
		t.Fatalf("address after opening with ?token=: %q (%v), want /ops: the token must leave the address bar", search, err)
	}
	wait("the connections", `document.getElementById('conn-ws').textContent === '3' && document.getElementById('conn-sse').textContent === '1' && document.getElementById('conn-poll').textContent === '1'`)
	wait("the LISTEN state", `document.getElementById('listen').dataset.state === 'up'`)

	// A trickle of commits: the events stream in, the numbers follow. In
	// the screenshot run it lasts longer and varies, so the chart has a
	// shape.
	var lastID string
	n, every := 30, 50*time.Millisecond
	update := os.Getenv("GATEWAY_UPDATE_SCREENSHOT") != ""
	if update {
		n = 400
	}
	for i := range n {
		if i%7 == 3 {
			db.exec(t, `UPDATE articles SET name = $1 WHERE id = (SELECT max(id) FROM articles)`, fmt.Sprintf("article %d", i))
		} else {
			db.insertFact(t, 1000+i, "2026-02-14")
		}
		ev := sse.next(t)
		lastID = ev.ID
		if i == 0 {
			db.exec(t, `INSERT INTO articles (name) VALUES ('groceries')`)
			lastID = sse.next(t).ID
		}
		d := every
		if update {
			d = time.Duration(float64(80*time.Millisecond) * (1.2 + math.Sin(float64(i)/25)))
		}
		time.Sleep(d) // the pace of the sample traffic, not a wait for the gateway
	}
	total := n + 1
	wait("every event on the page", fmt.Sprintf(`__ops.events === %d && document.querySelector('#events li').dataset.id === %q`, total, lastID))
	wait("the received total", fmt.Sprintf(`document.getElementById('received-total').textContent === %q`, fmt.Sprint(total)))
	wait("the delivery lag", `document.getElementById('lag-p50').textContent !== '-' && +document.getElementById('lag-count').textContent.replace(/,/g, '') >= 3`)
	wait("the rate chart", `document.querySelector('#chart polyline') && +document.getElementById('chart').dataset.max > 0`)

	// The stream carries no rows: an operator sees the flow, not the data.
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "budget_fact_created") || strings.Contains(text, "groceries") || strings.Contains(text, "2026-02-14") {
		t.Fatalf("the page shows %q: want event types, never row values", text)
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil || img.Bounds().Dx() < 1000 {
		t.Fatalf("screenshot: not a PNG of the page (%v)", err)
	}
	if update {
		if err := os.MkdirAll(filepath.Dir(opsScreenshot), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(opsScreenshot, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", opsScreenshot, len(shot))
	}
}

// The README shows docs/ops.png: it must exist and be a PNG.
func TestOpsScreenshotInRepo(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(opsScreenshot)
	if err != nil {
		t.Fatalf("%v: regenerate it with GATEWAY_UPDATE_SCREENSHOT=1 go test ./cmd/gateway -run TestOpsPageInBrowser", err)
	}
	if _, err := png.DecodeConfig(bytes.NewReader(b)); err != nil {
		t.Fatalf("%s: %v", opsScreenshot, err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte("(docs/ops.png)")) {
		t.Fatal("the README does not show docs/ops.png")
	}
}
