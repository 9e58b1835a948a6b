package gateway

import (
	"testing"

	"github.com/budget-rt/gateway/notify"
)

func TestRing(t *testing.T) {
	t.Parallel()
	r := newRing(3)
	pos := func(i int64) notify.Position { return notify.Position{Seq: i, ID: 10 * i} }
	for i := int64(1); i <= 5; i++ {
		ev := r.push(&entry{Event: notify.Event{Pos: pos(i)}})
		if (ev != nil) != (i > 3) {
			t.Fatalf("push %d evicted %v", i, ev)
		}
		if ev != nil && ev.Pos != pos(i-3) {
			t.Fatalf("push %d evicted %v, want %v", i, ev.Pos, pos(i-3))
		}
	}
	if r.len() != 3 || r.at(0).Pos != pos(3) || r.at(2).Pos != pos(5) {
		t.Fatalf("ring holds %v..%v (%d), want 3..5", r.at(0).Pos, r.at(2).Pos, r.len())
	}
	if i, ok := r.find(pos(4)); !ok || i != 1 {
		t.Fatalf("find(4) = %d, %v", i, ok)
	}
	if _, ok := r.find(notify.Position{Seq: 4, ID: 41}); ok {
		t.Fatalf("found a position that is not there")
	}
	if i := r.after(notify.Position{Seq: 3, ID: 31}); i != 1 {
		t.Fatalf("after(3-31) = %d, want 1", i)
	}
	if got := r.slice(1); len(got) != 2 || got[0].Pos != pos(4) {
		t.Fatalf("slice(1) = %v", got)
	}
}

func TestFrames(t *testing.T) {
	t.Parallel()
	ev := notify.Event{Pos: notify.Position{Seq: 7, ID: 9}, Type: "budget_fact_created", Data: []byte(`{"id":1}`)}
	e := newEntry(ev)
	want := `{"id":"7-9","type":"budget_fact_created","event":"budget_fact_created","data":{"id":1},"timestamp":"0001-01-01T00:00:00.000000Z"}`
	if string(e.frame) != want {
		t.Fatalf("frame\n got %s\nwant %s", e.frame, want)
	}
	if wantSSE := "id: 7-9\nevent: budget_fact_created\ndata: " + want + "\n\n"; string(e.sse) != wantSSE {
		t.Fatalf("sse\n got %q\nwant %q", e.sse, wantSSE)
	}
	ev.Truncated = true
	ev.Type = `odd"type`
	if got := string(newEntry(ev).frame); got != `{"id":"7-9","type":"odd\"type","event":"odd\"type","data":{"id":1},"truncated":true,"timestamp":"0001-01-01T00:00:00.000000Z"}` {
		t.Fatalf("escaped frame: %s", got)
	}
}
