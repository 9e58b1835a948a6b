package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/budget-rt/gateway/config"
)

// Subscriptions and visibility, over real sockets on every transport.

// subsSchema adds tables whose rows belong to someone: notes to a user,
// ledgers to a family.
const subsSchema = `
CREATE TABLE notes (
    id      serial PRIMARY KEY,
    user_id int NOT NULL,
    body    text NOT NULL
);
CREATE TABLE ledgers (
    id        serial PRIMARY KEY,
    family_id int NOT NULL,
    label     text NOT NULL
);`

const subsTrack = "GATEWAY_TRACK=facts:budget_fact,articles:article,notes:note,ledgers:ledger"

// subsRules: a note is its user's; a ledger is seen by the families the
// token lists.
const subsRules = "GATEWAY_VISIBILITY=notes:user_id=user,ledgers:family_id=families"

func newSubsDB(t *testing.T) *testDB {
	t.Helper()
	db := newBareDB(t, schema, subsSchema)
	db.migrate(t, subsTrack)
	return db
}

// subsUser is a user of the app with the families its tokens list.
type subsUser struct {
	id       int64
	families []int
}

func (u subsUser) wsToken(t testing.TB) string {
	c := protoWSClaims(u.id)
	c["families"] = u.families
	return protoSign(t, jwt.SigningMethodHS256, []byte(protoSecret), c)
}

func (u subsUser) bearer(t testing.TB) protoAuth {
	c := protoAccessClaims(u.id)
	c["families"] = u.families
	return protoBearer(protoSign(t, jwt.SigningMethodHS256, []byte(protoSecret), c))
}

// label names what a frame is about: its type and the row's text column.
func label(t testing.TB, typ string, data json.RawMessage) string {
	t.Helper()
	var row map[string]any
	if err := json.Unmarshal(data, &row); err != nil {
		t.Fatalf("%s data %s: %v", typ, data, err)
	}
	for _, k := range []string{"body", "label", "name"} {
		if v, ok := row[k].(string); ok {
			return typ + ":" + v
		}
	}
	if v, ok := row["amount"].(float64); ok {
		return fmt.Sprintf("%s:%v", typ, v)
	}
	return typ
}

// wsLabels reads frames (skipping pings and acknowledgements) until the
// one labelled end, and returns the labels before it.
func wsLabels(t testing.TB, c *wsClient, end string) []string {
	t.Helper()
	var out []string
	for {
		f := c.protoNextNonPing(t, 20*time.Second)
		if f.ID == "" {
			continue // the gateway's own frames
		}
		l := label(t, f.Type, f.Data)
		if l == end {
			return out
		}
		out = append(out, l)
	}
}

func sseLabels(t testing.TB, c *sseClient, end string) []string {
	t.Helper()
	var out []string
	for {
		ev := c.next(t)
		var f frame
		if err := json.Unmarshal([]byte(ev.Data), &f); err != nil {
			t.Fatalf("SSE data %s: %v", ev.Data, err)
		}
		l := label(t, f.Type, f.Data)
		if l == end {
			return out
		}
		out = append(out, l)
	}
}

// pollPage polls once (answering at the first event) and returns the
// events' labels and server_time.
func pollPage(t testing.TB, g *gw, auth protoAuth, since, query string) ([]string, string) {
	t.Helper()
	code, b := protoCall(t, http.MethodGet, fmt.Sprintf("%s/api/v1/budget/poll?since=%s&timeout=10&%s", g.base, since, query), "", auth)
	if code != http.StatusOK {
		t.Fatalf("poll %s: %d %s", query, code, b)
	}
	var a struct {
		Events []struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		} `json:"events"`
		ServerTime float64 `json:"server_time"`
	}
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("poll answer %s: %v", b, err)
	}
	var out []string
	for _, e := range a.Events {
		out = append(out, label(t, e.Type, e.Data))
	}
	return out, protoSince(a.ServerTime)
}

// pollLabels pages /poll from since 0 until the label end.
func pollLabels(t testing.TB, g *gw, auth protoAuth, query, end string) []string {
	t.Helper()
	var out []string
	since := "0"
	for range 100 {
		var page []string
		page, since = pollPage(t, g, auth, since, query)
		for _, l := range page {
			if l == end {
				return out
			}
			out = append(out, l)
		}
	}
	t.Fatalf("poll %s: no %s after 100 pages", query, end)
	return nil
}

func sameLabels(t testing.TB, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s received\n  %q\nwant\n  %q", what, got, want)
	}
}

// Two users with different rights never see each other's rows: not live on
// the WebSocket, SSE or long-poll, and not through a replay from memory or
// from the event log. Rows of tables without a rule go to both.
func TestVisibilityAcrossTransports(t *testing.T) {
	t.Parallel()
	db := newSubsDB(t)
	g := startGateway(t, db, protoAuthOn(subsTrack, subsRules)...)
	alice := subsUser{id: 1, families: []int{10, 11}}
	bob := subsUser{id: 2, families: []int{20}}

	probe := dialWS(t, g, "token="+alice.wsToken(t))
	db.exec(t, `INSERT INTO articles (name) VALUES ('start')`)
	start := probe.protoNextNonPing(t, 10*time.Second)
	if label(t, start.Type, start.Data) != "article_created:start" {
		t.Fatalf("first frame %s %s", start.Type, start.Data)
	}

	wsA := dialWS(t, g, "token="+alice.wsToken(t))
	wsB := dialWS(t, g, "token="+bob.wsToken(t))
	sseA := dialSSE(t, g, "", subsHeader(t, alice.bearer(t)))
	sseB := dialSSE(t, g, "token="+url.QueryEscape(bob.wsToken(t)), nil)

	for _, q := range []string{
		`INSERT INTO notes (user_id, body) VALUES (1, 'a-note')`,
		`INSERT INTO notes (user_id, body) VALUES (2, 'b-note')`,
		`INSERT INTO ledgers (family_id, label) VALUES (10, 'fam10')`,
		`INSERT INTO ledgers (family_id, label) VALUES (20, 'fam20')`,
		`INSERT INTO ledgers (family_id, label) VALUES (11, 'fam11')`,
		`INSERT INTO ledgers (family_id, label) VALUES (30, 'fam30')`,
		`UPDATE notes SET body = 'b-note2' WHERE user_id = 2`,
		`DELETE FROM notes WHERE user_id = 2`,
		`INSERT INTO articles (name) VALUES ('shared')`,
		`INSERT INTO facts (amount, fact_date) VALUES (5, '2026-01-05')`,
		`INSERT INTO articles (name) VALUES ('end')`,
	} {
		db.exec(t, q)
	}
	wantA := []string{"note_created:a-note", "ledger_created:fam10", "ledger_created:fam11", "article_created:shared", "budget_fact_created:5"}
	wantB := []string{"note_created:b-note", "ledger_created:fam20", "note_updated:b-note2", "note_deleted:b-note2", "article_created:shared", "budget_fact_created:5"}
	const end = "article_created:end"

	sameLabels(t, "alice's WebSocket", wsLabels(t, wsA, end), wantA)
	sameLabels(t, "bob's WebSocket", wsLabels(t, wsB, end), wantB)
	sameLabels(t, "alice's SSE (Bearer)", sseLabels(t, sseA, end), wantA)
	sameLabels(t, "bob's SSE (?token=)", sseLabels(t, sseB, end), wantB)
	// /poll from the start of the window: "start" comes first.
	sameLabels(t, "alice's long-poll", pollLabels(t, g, alice.bearer(t), "", end), append([]string{"article_created:start"}, wantA...))
	sameLabels(t, "bob's long-poll", pollLabels(t, g, bob.bearer(t), "", end), append([]string{"article_created:start"}, wantB...))

	// Resumes from memory.
	sameLabels(t, "alice's resume (memory)", wsLabels(t, dialWS(t, g, "token="+alice.wsToken(t)+"&last_event_id="+start.ID), end), wantA)
	sameLabels(t, "bob's SSE resume (memory)", sseLabels(t, dialSSE(t, g, "", subsLastID(subsHeader(t, bob.bearer(t)), start.ID)), end), wantB)

	// Resumes from the log table: a gateway whose window holds the last 3
	// events only.
	g2 := startGateway(t, db, protoAuthOn(subsTrack, subsRules, "GATEWAY_REPLAY_EVENTS=3")...)
	sameLabels(t, "alice's resume (log)", wsLabels(t, dialWS(t, g2, "token="+alice.wsToken(t)+"&last_event_id="+start.ID), end), wantA)
	sameLabels(t, "bob's resume (log)", wsLabels(t, dialWS(t, g2, "token="+bob.wsToken(t)+"&last_event_id="+start.ID), end), wantB)
	sameLabels(t, "alice's SSE resume (log)", sseLabels(t, dialSSE(t, g2, "", subsLastID(subsHeader(t, alice.bearer(t)), start.ID)), end), wantA)

	// A user with no families sees no ledger; a token whose claim is not a
	// list or a value (an object) sees none either.
	carol := subsUser{id: 3}
	db.exec(t, `INSERT INTO ledgers (family_id, label) VALUES (10, 'fam10b')`)
	db.exec(t, `INSERT INTO articles (name) VALUES ('end2')`)
	sameLabels(t, "carol's resume", wsLabels(t, dialWS(t, g, "token="+carol.wsToken(t)+"&last_event_id="+start.ID), "article_created:end2"),
		[]string{"article_created:shared", "budget_fact_created:5", "article_created:end"})
	odd := protoWSClaims(4)
	odd["families"] = map[string]any{"10": true}
	oddTok := protoSign(t, jwt.SigningMethodHS256, []byte(protoSecret), odd)
	sameLabels(t, "a token with an object claim", wsLabels(t, dialWS(t, g, "token="+oddTok+"&last_event_id="+start.ID), "article_created:end2"),
		[]string{"article_created:shared", "budget_fact_created:5", "article_created:end"})
}

func subsHeader(t testing.TB, auth protoAuth) http.Header {
	t.Helper()
	r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	auth(r)
	return r.Header
}

func subsLastID(h http.Header, id string) http.Header {
	h.Set("Last-Event-ID", id)
	return h
}

// Subscriptions narrow a stream by type, table and column values, at
// connect time on every transport and by messages on the WebSocket; a
// resume replays only what the subscription matches; deletes are routed by
// the row they removed.
func TestSubscriptionFilters(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	probe := dialWS(t, g, "")
	db.exec(t, `INSERT INTO articles (name) VALUES ('start')`)
	start := probe.next(t, 10*time.Second)

	byAmount := dialWS(t, g, "where=amount=7")
	created7 := dialWS(t, g, "types=budget_fact_created&where=amount%3D7")
	arts := dialSSE(t, g, "tables=articles", nil)
	two := dialWS(t, g, "where=amount=7&where=description=x")
	steer := dialWS(t, g, "types=budget_fact_deleted")

	id7 := db.insertFact(t, 7, "2026-01-07")
	db.insertFact(t, 8, "2026-01-08")
	db.exec(t, `UPDATE facts SET description = 'x' WHERE id = $1`, id7)
	db.exec(t, `INSERT INTO articles (name) VALUES ('a1')`)
	db.exec(t, `DELETE FROM facts WHERE id = $1`, id7)
	db.exec(t, `INSERT INTO articles (name) VALUES ('end')`)
	const end = "article_created:end"

	// where=amount=7 has no end marker of its own: it stops at the delete.
	got := wsLabelsN(t, byAmount, 3)
	sameLabels(t, "where=amount=7", got, []string{"budget_fact_created:7", "budget_fact_updated:7", "budget_fact_deleted:7"})
	sameLabels(t, "types=budget_fact_created&where=amount=7", wsLabelsN(t, created7, 1), []string{"budget_fact_created:7"})
	sameLabels(t, "tables=articles (SSE)", sseLabels(t, arts, end), []string{"article_created:a1"})
	sameLabels(t, "two where conditions", wsLabelsN(t, two, 2), []string{"budget_fact_updated:7", "budget_fact_deleted:7"})
	sameLabels(t, "poll where=amount=8", pollLabelsN(t, g, "where=amount%3D8", 1), []string{"budget_fact_created:8"})
	sameLabels(t, "poll types=article_created", pollLabels(t, g, protoNoAuth, "types=article_created", end), []string{"article_created:start", "article_created:a1"})

	// A resume honours the subscription.
	sameLabels(t, "resume with where=amount=7", wsLabelsN(t, dialWS(t, g, "where=amount=7&last_event_id="+start.ID), 3),
		[]string{"budget_fact_created:7", "budget_fact_updated:7", "budget_fact_deleted:7"})
	sameLabels(t, "SSE resume with tables=articles", sseLabels(t, dialSSE(t, g, "tables=articles&last_event_id="+start.ID, nil), end),
		[]string{"article_created:a1"})

	// Messages: add a subscription, then drop the one it started with.
	_ = wsLabelsN(t, steer, 1) // the delete
	subsSend(t, steer, `{"type":"subscribe","id":"arts","tables":["articles"]}`)
	subsAck(t, steer, "subscribed", "arts", []string{"default", "arts"})
	subsSend(t, steer, `{"type":"subscribe","where":{"amount":9,"article_id":"1"}}`)
	subsAck(t, steer, "subscribed", "s1", []string{"default", "arts", "s1"})
	db.exec(t, `INSERT INTO articles (name) VALUES ('a2')`)
	id9 := db.insertFact(t, 9, "2026-01-09")
	db.exec(t, `DELETE FROM facts WHERE id = $1`, id9)
	sameLabels(t, "after subscribing", wsLabelsN(t, steer, 3), []string{"article_created:a2", "budget_fact_created:9", "budget_fact_deleted:9"})

	subsSend(t, steer, `{"type":"unsubscribe","id":"default"}`)
	subsAck(t, steer, "unsubscribed", "default", []string{"arts", "s1"})
	id := db.insertFact(t, 10, "2026-01-10")
	db.exec(t, `DELETE FROM facts WHERE id = $1`, id)
	db.exec(t, `INSERT INTO articles (name) VALUES ('a3')`)
	sameLabels(t, "after unsubscribing", wsLabelsN(t, steer, 1), []string{"article_created:a3"})

	// Bad messages are answered, and change nothing.
	for _, m := range []string{
		`{"type":"subscribe","where":{"amount":{"gt":1}}}`,
		`{"type":"subscribe","where":{"bad column":1}}`,
		`{"type":"subscribe","types":[]}`,
		`{"type":"subscribe","where":"amount=1"}`,
		`{"type":"unsubscribe","id":"nope"}`,
		`{"type":"unsubscribe"}`,
	} {
		subsSend(t, steer, m)
		f := steer.protoNextNonPing(t, 10*time.Second)
		if f.Type != "subscription_error" || !strings.Contains(string(f.Data), "bad subscription") {
			t.Fatalf("%s: got %s %s, want subscription_error", m, f.Type, f.Data)
		}
	}
	db.exec(t, `INSERT INTO articles (name) VALUES ('a4')`)
	sameLabels(t, "after bad messages", wsLabelsN(t, steer, 1), []string{"article_created:a4"})

	// Bad query parameters are refused before anything is streamed.
	for _, q := range []string{"where=amount", "where=1x=2", "types=", "tables=,", "where=" + strings.Repeat("a", 64) + "=1"} {
		if code := protoDialRefused(t, g, q, nil); code != http.StatusBadRequest {
			t.Fatalf("WebSocket with %s: %d, want 400", q, code)
		}
		for _, path := range []string{"/api/v1/budget/events?", "/api/v1/budget/poll?timeout=0&"} {
			code, b := protoCall(t, http.MethodGet, g.base+path+q, "", protoNoAuth)
			if code != http.StatusBadRequest || !strings.Contains(string(b), "bad subscription") {
				t.Fatalf("%s%s: %d %s, want 400 naming the subscription", path, q, code, b)
			}
		}
	}
}

// wsLabelsN returns the labels of the next n event frames.
func wsLabelsN(t testing.TB, c *wsClient, n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		f := c.protoNextNonPing(t, 20*time.Second)
		if f.ID == "" {
			t.Fatalf("unexpected %s %s", f.Type, f.Data)
		}
		out = append(out, label(t, f.Type, f.Data))
	}
	return out
}

// pollLabelsN pages /poll from since 0 until it has n events.
func pollLabelsN(t testing.TB, g *gw, query string, n int) []string {
	t.Helper()
	out, _ := pollPage(t, g, protoNoAuth, "0", query)
	if len(out) != n {
		t.Fatalf("poll %s: %q, want %d events", query, out, n)
	}
	return out
}

func subsSend(t testing.TB, c *wsClient, msg string) {
	t.Helper()
	if err := c.conn.WriteMessage(1, []byte(msg)); err != nil {
		t.Fatalf("send %s: %v", msg, err)
	}
}

// subsAck expects the acknowledgement of a subscription change.
func subsAck(t testing.TB, c *wsClient, typ, id string, active []string) {
	t.Helper()
	f := c.protoNextNonPing(t, 10*time.Second)
	var d struct {
		ID            string   `json:"id"`
		Subscriptions []string `json:"subscriptions"`
	}
	if f.Type != typ || json.Unmarshal(f.Data, &d) != nil || d.ID != id || !slices.Equal(d.Subscriptions, active) {
		t.Fatalf("got %s %s, want %s of %s with %q active", f.Type, f.Data, typ, id, active)
	}
}

// A visibility rule the tracked table cannot serve stops the gateway with
// a clear error, rather than leak rows or drop them: an untracked table, a
// column the events do not carry, batch deletes. Without a JWT secret,
// rules are refused outright.
func TestVisibilityRuleMustFit(t *testing.T) {
	t.Parallel()
	db := newSubsDB(t)
	db.exec(t, `SELECT rtgw.track('notes', 'note', ARRAY['id', 'body'])`)
	db.exec(t, `SELECT rtgw.track('ledgers', 'ledger', NULL, NULL, 'ledgers_batch_deleted')`)
	for _, c := range []struct{ rules, want string }{
		{"GATEWAY_VISIBILITY=nothere:user_id=user", "nothere is not tracked"},
		{"GATEWAY_VISIBILITY=notes:user_id=user", "notes's events do not carry user_id"},
		{"GATEWAY_VISIBILITY=ledgers:family_id=families", "ledgers sends batch deletes"},
	} {
		cfg, err := config.Load(db.environ(protoAuthOn(c.rules)...))
		if err != nil {
			t.Fatalf("load config: %v", err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		err = serve(ctx, cfg, testLogger(), ln)
		cancel()
		if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: serve returned %v, want an error saying %q", c.rules, err, c.want)
		}
	}
	cfg, err := config.Load(db.environ(subsRules))
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	if err := serve(t.Context(), cfg, testLogger(), nil); err == nil || !strings.Contains(err.Error(), "GATEWAY_VISIBILITY needs GATEWAY_JWT_SECRET") {
		t.Fatalf("rules in open mode: serve returned %v", err)
	}
}
