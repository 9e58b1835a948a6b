package gateway

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// The long-poll answer is written one event at a time; its bytes are what
// encoding the whole answer at once gives (the app's client and the
// protocol tests know that form).
func TestPollAnswerStreamsTheSameBytes(t *testing.T) {
	at := time.Date(2026, 1, 5, 4, 17, 38, 989611000, time.UTC)
	var evs []*entry
	for _, ev := range []notify.Event{
		{Pos: notify.Position{Seq: 1, ID: 1}, Type: "budget_fact_created", Data: []byte(`{"id":1,"amount":1500}`), Time: at},
		{Pos: notify.Position{Seq: 1, ID: 2}, Type: "article_updated", Data: []byte(`{"id":2,"name":"<b>&\"x\"</b>","n":1e3}`), Time: at},
		{Pos: notify.Position{Seq: 7, ID: 90}, Type: "fact_deleted", Data: []byte(`{"id":3}`), Truncated: true, Time: at.Add(time.Duration(3) * time.Microsecond)},
	} {
		evs = append(evs, newEntry(ev))
	}
	for n := range len(evs) + 1 {
		rec := httptest.NewRecorder()
		if err := writePollAnswer(rec, evs[:n], unixSeconds(at)); err != nil {
			t.Fatal(err)
		}
		out := make([]pollEvent, n)
		for i, e := range evs[:n] {
			out[i] = pollEvent{ID: e.Pos.String(), Type: e.Type, Data: e.Data, Truncated: e.Truncated, Timestamp: unixSeconds(e.Time)}
		}
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(map[string]any{"events": out, "server_time": unixSeconds(at)}); err != nil {
			t.Fatal(err)
		}
		if got := rec.Body.String(); got != want.String() {
			t.Fatalf("%d events:\n got %s\nwant %s", n, got, want.String())
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
	}
}
