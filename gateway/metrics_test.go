package gateway

import (
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// The WebSocket writer counts events, never the transport's own frames.
func TestSentWSCountsEventsOnly(t *testing.T) {
	m := newMetrics(New(slog.New(slog.DiscardHandler), nil, nil, Options{Window: 8, SendQueue: 4}), Sources{})
	m.sentWS(&entry{frame: controlFrame("ping", "", map[string]string{}, time.Now())})
	if n := m.delivered[transportWS].Load(); n != 0 {
		t.Fatalf("control frames counted as %d deliveries", n)
	}
	e := newEntry(notify.Event{Pos: notify.Position{Seq: 3, ID: 9}, Type: "x_created", Data: []byte(`{}`), Time: time.Now()})
	m.sentWS(e)
	if n := m.delivered[transportWS].Load(); n != 1 {
		t.Fatalf("event frame counted as %d deliveries, want 1", n)
	}
}

// The hot paths allocate nothing: one atomic add and one observation.
func TestDeliveryMetricsDoNotAllocate(t *testing.T) {
	m := newMetrics(New(slog.New(slog.DiscardHandler), nil, nil, Options{Window: 8, SendQueue: 4}), Sources{})
	e := newEntry(notify.Event{Pos: notify.Position{Seq: 3, ID: 9}, Type: "x_created", Data: []byte(`{}`), Time: time.Now()})
	if n := testing.AllocsPerRun(1000, func() {
		m.sentWS(e)
		m.delivered1(transportSSE, e.Time)
		m.receivedN(1)
	}); n != 0 {
		t.Fatalf("%v allocations per delivery, want 0", n)
	}
}

func TestWhyOfCode(t *testing.T) {
	for code, want := range map[int]string{1000: "disconnect_route", 1001: "shutdown", 4008: "slow", 1008: "policy", 1009: "too_big", 1011: "error", 4999: "other"} {
		if got := whyNames[whyOfCode(code)]; got != want {
			t.Errorf("close code %d: reason %q, want %q", code, got, want)
		}
	}
	var tag closeTag
	tag.code(CloseSlow)
	tag.code(CloseGoingAway)
	if tag.get() != whySlow {
		t.Errorf("first cause lost: %q", whyNames[tag.get()])
	}
}

// The page's quantiles interpolate within buckets over the last minute,
// ignoring what was observed before it.
func TestOpsLagQuantiles(t *testing.T) {
	m := newMetrics(New(slog.New(slog.DiscardHandler), nil, nil, Options{Window: 8, SendQueue: 4}), Sources{})
	o := newOpsState()
	now := time.Now()
	for range 10 {
		m.lag[transportWS].Observe(20) // old and slow: must leave the window
	}
	o.sample(m, now)
	if n, _ := o.lagQuantiles(.5); n != 0 {
		t.Fatalf("one sample: count %d, want none", n)
	}
	for i := range opsLagWindow {
		if i == 0 {
			for range 100 {
				m.lag[transportSSE].Observe(0.0007) // in (0.5 ms, 1 ms]
			}
		}
		o.sample(m, now.Add(time.Duration(i+1)*time.Second))
	}
	count, qs := o.lagQuantiles(.5, .99)
	if count != 100 || math.Abs(qs[0]-0.75) > 1e-9 || math.Abs(qs[1]-0.995) > 1e-9 {
		t.Fatalf("count %d quantiles %v ms, want 100 and [0.75 0.995]", count, qs)
	}
	recv, _ := o.series()
	if len(recv) != opsLagWindow {
		t.Fatalf("%d rate samples, want %d", len(recv), opsLagWindow)
	}
}
