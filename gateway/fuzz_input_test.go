package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/budget-rt/gateway/notify"
)

// fuzzNow is the clock of the fuzz targets: answers carry it.
var fuzzNow = time.Date(2026, 1, 1, 12, 0, 0, 123456000, time.UTC)

// decodeFrame parses one of the gateway's frames, requiring valid UTF-8
// (a WebSocket text frame must be) and JSON.
func decodeFrame(t *testing.T, b []byte) (typ string, data map[string]any) {
	t.Helper()
	var f struct {
		Type, Event, Timestamp string
		Data                   map[string]any
	}
	if !utf8.Valid(b) || json.Unmarshal(b, &f) != nil {
		t.Fatalf("frame %q is not JSON in UTF-8", b)
	}
	if f.Type == "" || f.Event != f.Type || f.Timestamp != fuzzNow.Format(timeLayout) || f.Data == nil {
		t.Fatalf("frame %s lacks its envelope", b)
	}
	return f.Type, f.Data
}

// asJSON is s as a JSON string decodes: each invalid UTF-8 byte becomes
// U+FFFD.
func asJSON(s string) string { return string([]rune(s)) }

// Client WebSocket messages: whatever arrives, the gateway ignores what it
// does not understand, answers ping and check_online, and changes
// subscriptions only as the message says, keeping the limits and
// answering in well-formed JSON with the ids now active. The message is
// applied again and again, as a client may resend it, to reach the limits.
func FuzzClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"ping"}`, `{"type":"check_online"}`, `{"type":"pong"}`, `{"type":"nope"}`, `{"type":5}`, `[]`, `null`, `"ping"`,
		`{"type":"ping"`, `{"type":"subscribe"}`, `{"type":"subscribe","id":"s1","types":["fact_created"],"tables":["public.facts"]}`,
		`{"type":"subscribe","where":{"financial_center_id":12,"ok":true,"n":null}}`, `{"type":"subscribe","where":{"a":{"b":1}}}`,
		`{"type":"subscribe","id":"","types":[]}`, `{"type":"subscribe","types":"x"}`, `{"type":"unsubscribe"}`,
		`{"type":"unsubscribe","id":"default"}`, `{"type":"unsubscribe","id":"s9"}`, `{"type":"subscribe","id":"default"}`,
		`{"type":"subscribe","id":"` + strings.Repeat("é", 40) + `"}`, "{\"type\":\"unsubscribe\",\"id\":\"\xff\"}",
		`{"type":"ping","type":"subscribe"}`, `{"TYPE":"ping"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		m := parseClientMessage(msg)
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(msg, &head) != nil {
			head.Type = ""
		}
		if m.typ != head.Type {
			t.Fatalf("message %q read as type %q, want %q", msg, m.typ, head.Type)
		}
		switch reply := m.reply(fuzzNow); m.typ {
		case "ping", "check_online":
			typ, data := decodeFrame(t, reply)
			if want := map[string]string{"ping": "pong", "check_online": "online_status"}[m.typ]; typ != want ||
				data["timestamp"] != fuzzNow.Format(timeLayout) || (typ == "online_status") != (data["online"] == true) {
				t.Fatalf("%s answered with %s", m.typ, reply)
			}
		default:
			if reply != nil {
				t.Fatalf("message %q answered with %s", msg, reply)
			}
		}
		if !m.changesSubscriptions() {
			if m.typ == "subscribe" || m.typ == "unsubscribe" || m.sub != nil || m.err != nil || m.id != nil {
				t.Fatalf("message %q: %+v", msg, m)
			}
			return
		}
		if m.sub != nil {
			checkSubscription(t, m.sub)
		}
		subs := []*Subscription{{ID: DefaultSubscription}}
		nsub := 0
		for range maxSubscriptions + 2 {
			before, n0 := slices.Clone(subs), nsub
			out, id, err := m.apply(subs, &nsub)
			if !slices.Equal(before, subs) {
				t.Fatalf("apply changed its input")
			}
			shown := out
			if err != nil {
				shown = subs
			}
			typ, data := decodeFrame(t, m.answer(shown, id, err, fuzzNow))
			if err != nil {
				asked := ""
				if m.id != nil {
					asked = clip(*m.id)
				}
				if !errors.Is(err, errBadSubscription) || typ != "subscription_error" || data["id"] != asJSON(asked) || data["error"] != asJSON(err.Error()) {
					t.Fatalf("%q refused with %v, answered %s %v", msg, err, typ, data)
				}
				continue
			}
			if len(out) > maxSubscriptions {
				t.Fatalf("%d subscriptions", len(out))
			}
			ids := make([]any, len(out))
			seen := map[string]bool{}
			for i, s := range out {
				if s.ID == "" || seen[s.ID] {
					t.Fatalf("subscription ids %v", ids)
				}
				seen[s.ID] = true
				ids[i] = s.ID
			}
			if typ != m.typ+"d" || data["id"] != asJSON(id) || fmt.Sprint(data["subscriptions"]) != fmt.Sprint(asJSONAll(ids)) {
				t.Fatalf("%s answered %s %v, ids %v", m.typ, typ, data, ids)
			}
			// Only the named subscription changes; the others stay, in order.
			others := slices.DeleteFunc(slices.Clone(before), func(s *Subscription) bool { return s.ID == id })
			switch m.typ {
			case "subscribe":
				want := "s" + strconv.Itoa(n0+1) // the gateway names it
				if m.id != nil {
					want = *m.id
				}
				last := out[len(out)-1]
				if id != want || last.ID != id || !slices.Equal(out[:len(out)-1], others) ||
					fmt.Sprint(last.Types, last.Tables, last.Where) != fmt.Sprint(m.sub.Types, m.sub.Tables, m.sub.Where) {
					t.Fatalf("subscribe %q gave %v (id %q), want %q added after %v", msg, ids, id, want, others)
				}
			case "unsubscribe":
				if id != *m.id || len(others) != len(before)-1 || !slices.Equal(out, others) {
					t.Fatalf("unsubscribe %q gave %v from %d", msg, ids, len(before))
				}
			}
			subs = out
		}
	})
}

func asJSONAll(ids []any) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = asJSON(id.(string))
	}
	return out
}

// checkSubscription checks the limits a subscription must keep, however it
// was asked for.
func checkSubscription(t *testing.T, s *Subscription) {
	t.Helper()
	for _, set := range []map[string]bool{s.Types, s.Tables} {
		if set == nil {
			continue
		}
		if len(set) == 0 || len(set) > maxNames {
			t.Fatalf("subscription with %d names", len(set))
		}
		for n := range set {
			if n == "" || len(n) > maxNameLen {
				t.Fatalf("subscription name %q", n)
			}
		}
	}
	if len(s.Where) > maxConds {
		t.Fatalf("%d where conditions", len(s.Where))
	}
	for _, c := range s.Where {
		if !isIdent(c.Column) || len(c.Value) > maxValueLen {
			t.Fatalf("where %q=%q", c.Column, c.Value)
		}
	}
	if len(s.ID) > maxSubIDLen {
		t.Fatalf("subscription id of %d bytes", len(s.ID))
	}
}

// The query parameters and Last-Event-ID header of the SSE, WebSocket and
// long-poll routes, straight from clients: the resume id is the header's
// when there is one; a subscription keeps its limits and matches the events
// it names; since is a time the gateway can have issued, and the
// server_time it answers comes back unchanged; timeout is 0 to 30 s.
func FuzzQuery(f *testing.F) {
	for _, s := range []struct{ query, header string }{
		{"", ""},
		{"last_event_id=12-3", ""},
		{"last_event_id=12-3", "14-1"},
		{"last_event_id=%zz&types=a", "x"},
		{"types=fact_created,fact_updated&tables=public.facts,notes&where=financial_center_id=12&where=ok=true", ""},
		{"types=&tables=%20,%20", ""},
		{"types=" + strings.Repeat("a,", 70), ""},
		{"where=a=1&where=a=2", ""},
		{"where=1a=1", ""},
		{"since=1767225600.123456&timeout=0", ""},
		{"since=-1&timeout=-1", ""},
		{"since=1e11&timeout=31", ""},
		{"since=NaN&timeout=1e3", ""},
		{"since=0x1p30&timeout=+5", ""},
		{"since=4294967295.999999&timeout=007", ""},
		{"since=1767225600.1234564", ""},
	} {
		f.Add(s.query, s.header)
	}
	f.Fuzz(func(t *testing.T, query, header string) {
		q, _ := url.ParseQuery(query) // as r.URL.Query() reads it
		h := http.Header{}
		if header != "" {
			h.Set("Last-Event-ID", header)
		}
		last := resumeID(h, q)
		if (header != "" && last != header) || (header == "" && last != q.Get("last_event_id")) {
			t.Fatalf("resume id %q from header %q and query %q", last, header, query)
		}
		if p, err := notify.ParsePosition(last); err == nil && p.String() != last {
			t.Fatalf("resume id %q read as %s", last, p)
		}

		if sub, err := ParseQuery(q); err != nil {
			if !errors.Is(err, errBadSubscription) {
				t.Fatalf("ParseQuery(%q): %v", query, err)
			}
		} else {
			checkQuerySubscription(t, query, q, sub)
		}

		if ts, err := parseSince(q.Get("since")); err == nil && !ts.IsZero() {
			if ts.Before(time.Unix(0, 0)) || ts.After(time.Unix(1e11, 0)) || ts.Nanosecond()%1000 != 0 || ts.Location() != time.UTC {
				t.Fatalf("since=%q read as %v", q.Get("since"), ts)
			}
			if ts.Unix() < 1<<32 {
				checkSinceRoundTrip(t, ts)
			}
		}

		s := q.Get("timeout")
		n, err := parseTimeout(s)
		atoi, aerr := strconv.Atoi(s)
		switch {
		case s == "":
			if err != nil || n != pollTimeoutDefault {
				t.Fatalf("no timeout read as %d, %v", n, err)
			}
		case aerr != nil || atoi < 0:
			if err == nil {
				t.Fatalf("timeout=%q accepted as %d", s, n)
			}
		case err != nil || n != min(atoi, pollTimeoutMax):
			t.Fatalf("timeout=%q read as %d, %v", s, n, err)
		}
	})
}

// checkQuerySubscription checks a subscription read from q: its limits, and
// that it matches an event with one of its types, one of its tables and its
// where values, and no event of another type.
func checkQuerySubscription(t *testing.T, query string, q url.Values, sub *Subscription) {
	t.Helper()
	checkSubscription(t, sub)
	if sub.ID != DefaultSubscription || (sub.Types == nil) != (q["types"] == nil) || (sub.Tables == nil) != (q["tables"] == nil) ||
		len(sub.Where) != len(q["where"]) {
		t.Fatalf("ParseQuery(%q) = %+v", query, sub)
	}
	for _, set := range []map[string]bool{sub.Types, sub.Tables} {
		for n := range set {
			if strings.TrimSpace(n) != n || strings.Contains(n, ",") {
				t.Fatalf("ParseQuery(%q): name %q", query, n)
			}
		}
	}
	row := map[string]string{}
	for _, c := range sub.Where {
		if v, ok := row[c.Column]; ok && v != c.Value {
			return // two values for one column: nothing can match
		}
		row[c.Column] = c.Value
	}
	data, _ := json.Marshal(row)
	e := &entry{Event: notify.Event{Type: "x", Table: "x", Data: data}}
	for n := range sub.Types {
		e.Type = n
	}
	for n := range sub.Tables {
		e.Table = n
	}
	if !sub.match(e) {
		t.Fatalf("ParseQuery(%q) = %+v does not match %s %s %s", query, sub, e.Type, e.Table, data)
	}
	if sub.Types != nil {
		e2 := &entry{Event: e.Event}
		e2.Type = "not:" + e.Type // a type no event has
		if sub.match(e2) {
			t.Fatalf("ParseQuery(%q) matches type %q", query, e2.Type)
		}
	}
}

// checkSinceRoundTrip: a client sends back the server_time the gateway
// answered as its next since; it must read as exactly that commit time, or
// the next poll would repeat or skip an event.
func checkSinceRoundTrip(t *testing.T, ts time.Time) {
	t.Helper()
	var body bytes.Buffer
	_ = json.NewEncoder(&body).Encode(map[string]any{"server_time": unixSeconds(ts)}) // as writeJSON sends it
	var got struct {
		ServerTime json.Number `json:"server_time"`
	}
	if err := json.Unmarshal(body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	back, err := parseSince(got.ServerTime.String())
	if err != nil || !back.Equal(ts) {
		t.Fatalf("server_time %s for %v reads back as %v (%v)", got.ServerTime, ts, back, err)
	}
}

// Every commit time before 2106 survives the server_time round trip.
func FuzzSinceRoundTrip(f *testing.F) {
	for _, us := range []int64{0, 1, 1767225600123456, 1767225600999999, 1<<32*1e6 - 1, 4102444800000001} {
		f.Add(us)
	}
	f.Fuzz(func(t *testing.T, us int64) {
		if us < 0 {
			us = -(us + 1)
		}
		checkSinceRoundTrip(t, time.UnixMicro(us%(1<<32*1e6)).UTC())
	})
}

// Events that pass the event log's checks become frames that every
// transport can carry as they are: JSON in UTF-8 with the event's fields,
// and an SSE message of exactly three fields (SSE ends a line at CR or LF,
// so neither may appear inside one).
func FuzzEventFrame(f *testing.F) {
	f.Add("budget_fact_created", []byte(`{"id":1,"amount":1500}`), int64(1042), int64(88813), int64(1767225600123456), false)
	f.Add("x", []byte(`{"s":"line\nbreak\r\u2028 </script>","n":null,"a":[{}]}`), int64(1), int64(1), int64(0), true)
	f.Fuzz(func(t *testing.T, typ string, data []byte, seq, id, us int64, truncated bool) {
		var compact bytes.Buffer
		if !notify.ValidType(typ) || seq < 1 || id < 1 || !utf8.Valid(data) || json.Compact(&compact, data) != nil || compact.Bytes()[0] != '{' {
			return // the event log refuses it (notify.FuzzDecodeRow)
		}
		ev := notify.Event{Pos: notify.Position{Seq: seq, ID: id}, Type: typ, Data: compact.Bytes(), Truncated: truncated, Time: time.UnixMicro(us)}
		e := newEntry(ev)
		var got struct {
			ID, Type, Event, Timestamp string
			Data                       json.RawMessage
			Truncated                  bool
		}
		if !utf8.Valid(e.frame) || json.Unmarshal(e.frame, &got) != nil {
			t.Fatalf("frame %q is not JSON in UTF-8", e.frame)
		}
		if got.ID != ev.Pos.String() || got.Type != typ || got.Event != typ || !bytes.Equal(got.Data, ev.Data) ||
			got.Truncated != truncated || got.Timestamp != ev.Time.UTC().Format(timeLayout) {
			t.Fatalf("frame %s lost fields of %+v", e.frame, ev)
		}
		if bytes.ContainsAny(e.frame, "\r\n") {
			t.Fatalf("frame %q breaks an SSE line", e.frame)
		}
		want := "id: " + got.ID + "\nevent: " + typ + "\ndata: " + string(e.frame) + "\n\n"
		if string(e.sse) != want || strings.Count(string(e.sse), "\n") != 4 || bytes.ContainsRune(e.sse, '\r') {
			t.Fatalf("SSE block %q, want %q", e.sse, want)
		}
	})
}
