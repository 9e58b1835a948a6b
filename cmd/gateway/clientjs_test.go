package main

// Browser tests of the client library the gateway serves,
// /api/v1/budget/client.js: a real Chromium loads testdata/client.html
// through a real nginx with the shipped locations, as a new frontend would
// (the cookie of the app, tokens minted by the gateway). Run them with
//
//	go test -race -count=1 -run ClientJS ./cmd/gateway/

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// clientJSDefaults keep the library's clocks short in these tests.
var clientJSDefaults = map[string]string{"backoff": "100", "backoffmax": "500", "attempts": "2", "stale": "10000", "polltimeout": "2"}

func (env *browserEnv) clientURL(overrides ...string) string {
	q := url.Values{}
	for k, v := range clientJSDefaults {
		q.Set(k, v)
	}
	for _, o := range overrides {
		k, v, _ := strings.Cut(o, "=")
		q.Set(k, v)
	}
	return env.site + "/client.html?" + q.Encode()
}

// clientJSState is window.__c.snapshot().
type clientJSState struct {
	State       string `json:"state"`
	Transport   string `json:"transport"`
	LastEventID string `json:"lastEventId"`
	Events      []struct {
		ID   string `json:"id"`
		Type string `json:"type"`
		Row  int64  `json:"row"`
		Via  string `json:"via"`
	} `json:"events"`
	Facts  int `json:"facts"`
	Resets []struct {
		Reason string `json:"reason"`
		ID     string `json:"id"`
	} `json:"resets"`
	States []string `json:"states"`
	Errors []any    `json:"errors"`
}

func (p *browserPage) clientState(t *testing.T) clientJSState {
	t.Helper()
	b, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`JSON.stringify(__c.snapshot())`))
	if err != nil {
		t.Fatalf("read client state: %v", err)
	}
	var s clientJSState
	if err := json.Unmarshal([]byte(b), &s); err != nil {
		t.Fatalf("client state %s: %v", b, err)
	}
	return s
}

// openClient loads client.html and waits for the library.
func (env *browserEnv) openClient(t *testing.T, u string) *browserPage {
	t.Helper()
	ctx, cancel := chromedp.NewContext(env.browser)
	t.Cleanup(cancel)
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
	if err := chromedp.Do(ctx, chromedp.Navigate(u)); err != nil {
		t.Fatalf("navigate to %s: %v", u, err)
	}
	p.waitClient(t, "the library to load", `window.__c !== undefined`, 10*time.Second)
	return p
}

// waitClient polls a JavaScript expression, showing the client's state on
// failure.
func (p *browserPage) waitClient(t *testing.T, what, expr string, timeout time.Duration) {
	t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		state, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`window.__c ? JSON.stringify(__c.snapshot(), null, 1) : "no client"`))
		t.Fatalf("waiting for %s (%s): %v\nclient state: %s\nconsole:\n%s", what, expr, err, state, tailLines(p.console.String(), 60))
	}
}

// rowsOf lists the table rows of the events, and checks that no event
// came twice.
func (s clientJSState) rows(t *testing.T) []int64 {
	t.Helper()
	seen := map[string]bool{}
	var out []int64
	for _, e := range s.Events {
		if e.ID == "" || seen[e.ID] {
			t.Fatalf("event id %q missing or delivered twice: %+v", e.ID, s.Events)
		}
		seen[e.ID] = true
		out = append(out, e.Row)
	}
	return out
}

// Over the WebSocket: on(type, fn) and on('*', fn) get the events in commit
// order, the library keeps the last id; a page that resumes from an id the
// log never issued gets on('reset') and then the live events.
func TestClientJSOverWebSocket(t *testing.T) {
	env := newBrowserEnv(t)
	p := env.openClient(t, env.clientURL())
	p.waitClient(t, "the WebSocket", `__c.rt.state === 'open' && __c.rt.transport === 'ws'`, 15*time.Second)

	f1 := env.db.insertFact(t, 10, "2026-01-05")
	a := env.db.queryInt(t, `INSERT INTO articles (name) VALUES ('Rent') RETURNING id`)
	f2 := env.db.insertFact(t, 20, "2026-01-06")
	p.waitClient(t, "three events", `__c.snapshot().events.length >= 3`, 10*time.Second)
	s := p.clientState(t)
	if got, want := s.rows(t), []int64{f1, a, f2}; !slices.Equal(got, want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	for i, typ := range []string{"budget_fact_created", "article_created", "budget_fact_created"} {
		if e := s.Events[i]; e.Type != typ || e.Via != "ws" {
			t.Fatalf("event %d: %+v, want %s via ws", i, e, typ)
		}
	}
	if s.Facts != 2 || s.LastEventID != s.Events[2].ID || len(s.Resets) != 0 || len(s.Errors) != 0 {
		t.Fatalf("state %+v: want 2 facts through on('budget_fact_created'), lastEventId the last id, no reset, no error", s)
	}

	r := env.openClient(t, env.clientURL("last=999999-1"))
	r.waitClient(t, "the reset", `__c.snapshot().resets.length === 1`, 15*time.Second)
	rs := r.clientState(t)
	if rs.Resets[0].Reason != "unknown" || rs.Resets[0].ID != s.LastEventID || rs.LastEventID != s.LastEventID {
		t.Fatalf("reset %+v, lastEventId %s; want reason unknown with the head's id %s", rs.Resets, rs.LastEventID, s.LastEventID)
	}
	f3 := env.db.insertFact(t, 30, "2026-01-07")
	for _, pg := range []*browserPage{p, r} {
		pg.waitClient(t, "the next fact", fmt.Sprintf(`__c.snapshot().events.some((e) => e.row === %d)`, f3), 10*time.Second)
	}
	if got := r.clientState(t).rows(t); !slices.Equal(got, []int64{f3}) {
		t.Fatalf("after the reset: rows %v, want only %d", got, f3)
	}
}

// The gateway stops under the page: the library falls back to SSE and then
// long-polling while nothing answers, resumes when the gateway is back
// (from the commit time of the last event on /poll), delivers what was
// committed meanwhile exactly once, and upgrades to the WebSocket again.
func TestClientJSResumesAcrossRestart(t *testing.T) {
	env := newBrowserEnv(t)
	p := env.openClient(t, env.clientURL("upgrade=1500"))
	p.waitClient(t, "the WebSocket", `__c.rt.state === 'open' && __c.rt.transport === 'ws'`, 15*time.Second)
	before := env.db.insertFact(t, 1, "2026-02-01")
	p.waitClient(t, "the first event", `__c.snapshot().events.length === 1`, 10*time.Second)

	env.gw.stop(t)
	p.waitClient(t, "the fall back to long-polling", `__c.snapshot().states.includes('connecting:poll')`, 20*time.Second)
	var during []int64
	for i := range 3 {
		during = append(during, env.db.insertFact(t, 10+i, "2026-02-02"))
	}
	env.gw = startGatewayAt(t, env.db, env.gwAddr, browserGatewayEnv...)
	p.waitClient(t, "the events committed while down", fmt.Sprintf(`__c.snapshot().events.some((e) => e.row === %d)`, during[2]), 20*time.Second)
	p.waitClient(t, "the upgrade to the WebSocket", `__c.rt.state === 'open' && __c.rt.transport === 'ws'`, 20*time.Second)
	after := env.db.insertFact(t, 99, "2026-02-03")
	p.waitClient(t, "the event after the upgrade", fmt.Sprintf(`__c.snapshot().events.some((e) => e.row === %d)`, after), 10*time.Second)

	s := p.clientState(t)
	want := append(append([]int64{before}, during...), after)
	if got := s.rows(t); !slices.Equal(got, want) {
		t.Fatalf("rows %v, want %v: each once, in commit order", got, want)
	}
	if s.Events[0].Via != "ws" || s.Events[1].Via != "poll" || s.Events[4].Via != "ws" {
		t.Fatalf("events %+v: want the first over ws, the missed ones over poll, the last over ws again", s.Events)
	}
	if len(s.Resets) != 0 {
		t.Fatalf("resets %+v, want none", s.Resets)
	}
}

// With the WebSocket refused at the proxy the library falls back to SSE:
// events arrive in order, and a resume from an id the log never issued is
// surfaced as a reset there too.
func TestClientJSFallbackToSSE(t *testing.T) {
	env := newBrowserEnv(t, withBlockedWS())
	p := env.openClient(t, env.clientURL())
	p.waitClient(t, "the fall back to SSE", `__c.rt.state === 'open' && __c.rt.transport === 'sse'`, 15*time.Second)
	var want []int64
	for i := range 5 {
		want = append(want, env.db.insertFact(t, i, "2026-03-01"))
	}
	p.waitClient(t, "five events", `__c.snapshot().events.length >= 5`, 10*time.Second)
	s := p.clientState(t)
	if got := s.rows(t); !slices.Equal(got, want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	for _, e := range s.Events {
		if e.Via != "sse" {
			t.Fatalf("event %+v not via sse", e)
		}
	}
	if !slices.Contains(s.States, "connecting:ws") || slices.Contains(s.States, "open:ws") {
		t.Fatalf("states %v: want failed WebSocket attempts first", s.States)
	}

	r := env.openClient(t, env.clientURL("last=999999-1"))
	r.waitClient(t, "the reset over SSE", `__c.snapshot().resets.length === 1 && __c.rt.transport === 'sse'`, 15*time.Second)
	if rs := r.clientState(t).Resets[0]; rs.Reason != "unknown" || rs.ID != s.LastEventID {
		t.Fatalf("reset %+v, want reason unknown with the head %s", rs, s.LastEventID)
	}
}

// With the WebSocket and SSE both refused at the proxy the library
// long-polls: a burst, a transaction of several rows and a marker arrive
// once each, in commit order.
func TestClientJSFallbackToPoll(t *testing.T) {
	env := newBrowserEnv(t, withBlockedWS(), withBlockedSSE())
	p := env.openClient(t, env.clientURL())
	p.waitClient(t, "the fall back to long-polling", `__c.rt.state === 'open' && __c.rt.transport === 'poll'`, 20*time.Second)
	var want []int64
	for i := range 10 {
		want = append(want, env.db.insertFact(t, i, "2026-03-02"))
	}
	rows, err := env.db.pool.Query(t.Context(), `INSERT INTO facts (amount, fact_date) SELECT g, '2026-03-03' FROM generate_series(1, 3) g RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if rows.Close(); rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	want = append(want, env.db.queryInt(t, `INSERT INTO articles (name) VALUES ('marker') RETURNING id`))
	p.waitClient(t, "the marker", `__c.snapshot().events.some((e) => e.type === 'article_created')`, 15*time.Second)
	s := p.clientState(t)
	if got := s.rows(t); !slices.Equal(got, want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	for _, e := range s.Events {
		if e.Via != "poll" {
			t.Fatalf("event %+v not via poll", e)
		}
	}
	// The library is the gateway's, served through the shipped location.
	resp, err := http.Get(env.site + "/api/v1/budget/client.js")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Test-Location") != "" || resp.Header.Get("ETag") == "" {
		t.Fatalf("client.js through nginx: %d, headers %v", resp.StatusCode, resp.Header)
	}
}
