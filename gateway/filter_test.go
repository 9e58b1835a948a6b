package gateway

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// The hub's side of subscriptions and visibility, checked exhaustively on a
// fixed set of events; the end-to-end proof over real sockets is in
// cmd/gateway (TestVisibilityAcrossTransports, TestSubscriptionFilters).

var filterRules = []Rule{
	{Table: "notes", Column: "user_id", Claim: ClaimUser},
	{Table: "ledgers", Column: "family_id", Claim: "families"},
}

// filterEvents covers rows of ruled and open tables, visible and not, with
// values of every JSON kind, and rows without the rule's column.
var filterEvents = func() []*entry {
	evs := []struct{ table, typ, data string }{
		{"notes", "note_created", `{"id":1,"user_id":1,"body":"mine"}`},
		{"notes", "note_deleted", `{"id":2,"user_id":2,"body":"theirs"}`},
		{"notes", "note_updated", `{"id":3,"user_id":"1","body":"string id"}`},
		{"notes", "note_created", `{"id":4,"body":"no owner"}`},
		{"notes", "note_created", `{"id":5,"user_id":null}`},
		{"ledgers", "ledger_created", `{"id":1,"family_id":10,"amount":7}`},
		{"ledgers", "ledger_created", `{"id":2,"family_id":20,"amount":7}`},
		{"ledgers", "ledger_updated", `{"id":3,"family_id":11,"amount":8,"ok":true}`},
		{"ledgers", "ledgers_batch_deleted", `{"ids":[1,2],"keys":[{"id":1},{"id":2}],"deleted_count":2}`},
		{"facts", "budget_fact_created", `{"id":1,"amount":7,"financial_center_id":12,"description":"x"}`},
		{"facts", "budget_fact_deleted", `{"id":1,"amount":7,"financial_center_id":"12"}`},
		{"facts", "budget_fact_updated", `{"id":2,"amount":7.5,"financial_center_id":13,"flag":false}`},
		{"articles", "article_created", `{"id":1,"name":"food","user_id":2}`},
		{"audit.entries", "entry_created", `{"id":1,"user_id":2}`},
	}
	out := make([]*entry, len(evs))
	for i, e := range evs {
		out[i] = newEntry(notify.Event{Pos: notify.Position{Seq: int64(i + 1), ID: int64(i + 1)}, Table: e.table, Type: e.typ,
			Data: []byte(e.data), Time: time.Unix(1767225600, 0)})
	}
	return out
}()

// filterViewer is user 1, in families 10 and 11.
func filterViewer() viewer {
	return newViewer(filterRules, User{ID: 1, Claims: map[string][]string{ClaimUser: {"1"}, "families": {"10", "11"}}})
}

// checkClient asserts the two properties every subscription must keep, for
// every event: it receives nothing its user may not see, and the index
// files it under a key of every event it wants (or live fan-out would miss
// what a replay delivers).
func checkClient(t *testing.T, c *client) {
	t.Helper()
	x := newIndex(filterRules)
	x.add(c)
	defer x.remove(c)
	for _, e := range filterEvents {
		if !c.wants(e) {
			continue
		}
		if !c.view.visible(e) {
			t.Fatalf("subscriptions %v widen visibility: %s %s", subsString(c.subs), e.Type, e.Data)
		}
		found := false
		x.each(e, func(o *client) { found = found || o == c })
		if !found {
			t.Fatalf("subscriptions %v want %s %s, but the index does not offer it (client keys %q, event keys %q)",
				subsString(c.subs), e.Type, e.Data, c.keys, x.eventKeys(e))
		}
	}
	if len(x.buckets) != len(c.keys) {
		t.Fatalf("index holds %d buckets for one client with %d keys", len(x.buckets), len(c.keys))
	}
}

// A client subscribed to everything answers wants without reading its
// subscriptions; once it narrows them, that shortcut must go, and come back
// when it subscribes to everything again.
func TestResubscribeNarrowsWants(t *testing.T) {
	h := NewHub(slog.New(slog.DiscardHandler), nil, 16, nil)
	c := newClient(nil, 1, &Subscription{ID: DefaultSubscription}, nil)
	wanted := func() (n int) {
		for _, e := range filterEvents {
			if c.wants(e) {
				n++
			}
		}
		return n
	}
	if n := wanted(); n != len(filterEvents) {
		t.Fatalf("subscribed to everything, it wants %d of %d events", n, len(filterEvents))
	}
	set := func(subs ...*Subscription) {
		h.resubscribe(c, func([]*Subscription) ([]*Subscription, error) { return subs, nil }, func([]*Subscription, error) {})
	}
	set(&Subscription{ID: "arts", Tables: map[string]bool{"articles": true}})
	if n := wanted(); n != 1 {
		t.Fatalf("subscribed to articles only, it wants %d events, want 1", n)
	}
	set(&Subscription{ID: "arts", Tables: map[string]bool{"articles": true}}, &Subscription{ID: "all"})
	if n := wanted(); n != len(filterEvents) {
		t.Fatalf("subscribed to everything again, it wants %d of %d events", n, len(filterEvents))
	}
}

func subsString(subs []*Subscription) string {
	b, _ := json.Marshal(subs)
	return string(b)
}

// names lists what c receives of filterEvents.
func names(c *client) []string {
	var out []string
	for _, e := range filterEvents {
		if c.wants(e) {
			out = append(out, fmt.Sprintf("%s#%s", e.Type, e.Data))
		}
	}
	return out
}

func TestSubscriptionsAndVisibility(t *testing.T) {
	all := &Subscription{ID: DefaultSubscription}
	cases := []struct {
		query string
		want  []int // indexes into filterEvents
	}{
		{"", []int{0, 2, 5, 7, 9, 10, 11, 12, 13}},
		{"types=note_created,note_deleted", []int{0}},
		{"tables=notes,public.facts", []int{0, 2, 9, 10, 11}},
		{"where=amount=7", []int{5, 9, 10}},
		{"where=financial_center_id=12", []int{9, 10}},
		{"where=amount=7&tables=facts&types=budget_fact_deleted", []int{10}},
		{"where=user_id=2", []int{12, 13}}, // rule tables stay hidden whatever the filter asks
		{"where=ok=true", []int{7}},
		{"where=flag=false&where=amount=7.5", []int{11}},
		{"where=description=null", nil},
	}
	for _, c := range cases {
		q, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := ParseQuery(q)
		if err != nil {
			t.Fatalf("%s: %v", c.query, err)
		}
		cl := newClient(nil, 1, sub, filterViewer())
		checkClient(t, cl)
		var want []string
		for _, i := range c.want {
			want = append(want, fmt.Sprintf("%s#%s", filterEvents[i].Type, filterEvents[i].Data))
		}
		if got := names(cl); !slices.Equal(got, want) {
			t.Fatalf("%q receives\n  %q\nwant\n  %q", c.query, got, want)
		}
	}
	// No rules: everything is visible.
	if got := names(newClient(nil, 1, all, nil)); len(got) != len(filterEvents) {
		t.Fatalf("without rules: %d events, want all %d", len(got), len(filterEvents))
	}
	// A user in no family sees no ledger, and no other user's note.
	none := newClient(nil, 1, all, newViewer(filterRules, User{ID: 9, Claims: map[string][]string{ClaimUser: {"9"}}}))
	checkClient(t, none)
	for _, e := range filterEvents {
		if none.wants(e) && (e.Table == "notes" || e.Table == "ledgers") {
			t.Fatalf("user 9 receives %s %s", e.Type, e.Data)
		}
	}
}

func TestParseQueryRefusals(t *testing.T) {
	long := make([]byte, maxValueLen+1)
	for i := range long {
		long[i] = 'x'
	}
	for _, q := range []url.Values{
		{"types": {""}},
		{"tables": {" , "}},
		{"where": {"amount"}},
		{"where": {"1amount=1"}},
		{"where": {"a-b=1"}},
		{"where": {"amount=" + string(long)}},
		{"where": {"a=1", "b=1", "c=1", "d=1", "e=1", "f=1", "g=1", "h=1", "i=1"}},
	} {
		if _, err := ParseQuery(q); err == nil {
			t.Fatalf("ParseQuery(%v) accepted", q)
		}
	}
}

// FuzzSubscribe feeds arbitrary subscribe messages and query strings: a
// subscription may narrow a client's stream, never widen it past what its
// user may see, and the index must offer the client every event it wants.
func FuzzSubscribe(f *testing.F) {
	for _, s := range []struct{ msg, query string }{
		{`{"type":"subscribe","id":"s1","types":["note_created"],"tables":["notes"],"where":{"user_id":2}}`, "where=user_id=2"},
		{`{"type":"subscribe","where":{"family_id":20}}`, "tables=ledgers"},
		{`{"type":"subscribe","tables":["ledgers"]}`, "types=ledger_created"},
		{`{"type":"subscribe","where":{"amount":7,"financial_center_id":"12"}}`, "where=amount=7&where=financial_center_id=12"},
		{`{"type":"subscribe","where":{"ok":true,"x":null}}`, "where=ok=true"},
		{`{"type":"subscribe","where":{"user_id":{"$ne":1}}}`, "where=user_id=1&tables=notes,ledgers"},
		{`{"type":"subscribe","types":[]}`, "types="},
		{`{"type":"unsubscribe","id":"default"}`, "tables=public.notes"},
		{`{}`, ""},
	} {
		f.Add([]byte(s.msg), s.query)
	}
	f.Fuzz(func(t *testing.T, msg []byte, query string) {
		view := filterViewer()
		var subs []*Subscription
		if q, err := url.ParseQuery(query); err == nil {
			if s, err := ParseQuery(q); err == nil {
				subs = append(subs, s)
			}
		}
		var m subscribeMsg
		if json.Unmarshal(msg, &m) == nil {
			if s, err := parseSubscribe(&m); err == nil {
				subs = append(subs, s)
			}
		}
		c := newClient(nil, 1, &Subscription{}, view)
		c.setSubs(subs)
		checkClient(t, c)
	})
}

// benchSink takes every frame at once and gives the credit back.
type benchSink struct {
	c *client
	n int
}

func (k *benchSink) send(*entry) bool  { k.n++; k.c.inflight.Add(-1); return true }
func (k *benchSink) close(int, string) {}

// BenchmarkPublishFiltered measures what one event costs the hub when
// clients subscribe by a column value and each event is for one of them:
// with the index the cost stays flat from 100 to 10,000 clients (a scan of
// every client would grow 100-fold). "all" is the fan-out to every client,
// for scale.
func BenchmarkPublishFiltered(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		for _, mode := range []string{"where", "all"} {
			b.Run(fmt.Sprintf("clients=%d/%s", n, mode), func(b *testing.B) {
				h := NewHub(slog.New(slog.DiscardHandler), nil, 1024, nil)
				h.Load(nil, notify.Position{}, true)
				sinks := make([]*benchSink, n)
				for i := range n {
					sub := &Subscription{ID: DefaultSubscription}
					if mode == "where" {
						sub.Where = []Cond{{Column: "financial_center_id", Value: fmt.Sprint(i)}}
					}
					c := newClient(nil, 1<<20, sub, nil)
					sinks[i] = &benchSink{c: c}
					c.sink = sinks[i]
					h.clients[c] = struct{}{}
					h.index.add(c)
				}
				evs := make([]notify.Event, 1000)
				seq := int64(0)
				b.ResetTimer()
				for i := 0; i < b.N; i += len(evs) {
					for j := range evs {
						seq++
						evs[j] = notify.Event{Pos: notify.Position{Seq: seq, ID: seq}, Table: "facts", Type: "budget_fact_created",
							Data: fmt.Appendf(nil, `{"id":%d,"financial_center_id":%d,"amount":1}`, seq, seq%int64(n))}
					}
					h.Publish(evs)
				}
				b.StopTimer()
				delivered := 0
				for _, s := range sinks {
					delivered += s.n
				}
				b.ReportMetric(float64(delivered)/float64(seq), "deliveries/event")
			})
		}
	}
}

// A WebSocket token the gateway mints from the cookie carries the claims
// the visibility rules read, so the socket sees what the cookie's owner may.
func TestMintedTokenKeepsRuleClaims(t *testing.T) {
	a := &Auth{Secret: []byte("secret"), Claims: []string{ClaimUser, "families"}}
	u := a.user(7, map[string]any{"user_id": 7.0, "families": []any{10.0, "11", true, map[string]any{}}})
	if want := []string{"10", "11", "true"}; !slices.Equal(u.Claims["families"], want) {
		t.Fatalf("claims from the access token: %q, want %q", u.Claims["families"], want)
	}
	tok, err := a.MintWS(u, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.WSToken(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != 7 || !slices.Equal(got.Claims["families"], u.Claims["families"]) || !slices.Equal(got.Claims[ClaimUser], []string{"7"}) {
		t.Fatalf("minted token gives %+v, want the cookie's %+v", got, u)
	}
}
