package main

import (
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestScanFrames: the scanner reads what the gateway sends (gateway/frame.go),
// one event per frame or an array of them (?batch=1), without decoding.
func TestScanFrames(t *testing.T) {
	t.Parallel()
	sc := &scanner{marker: []byte("rtlab12.")}
	ours := func(id string, row int) string {
		return `{"id":"` + id + `","type":"budget_fact_created","event":"budget_fact_created","data":{"id":9,"amount":3,` +
			`"description":"rtlab12.` + strconv.Itoa(row) + `","article_id":1},"timestamp":"2026-12-02T08:00:00.000001Z"}`
	}
	type seen struct {
		id    string
		reset bool
		row   int64
	}
	for _, tc := range []struct {
		name  string
		frame string
		want  []seen
	}{
		{"one of ours", ours("7-7", 42), []seen{{"7-7", false, 42}}},
		{"connected has no id", `{"type":"connected","event":"connected","data":{"user_id":0,"connection_id":"x"},"timestamp":"t"}`, nil},
		{"ping", `{"type":"ping","event":"ping","data":{"timestamp":"t"},"timestamp":"t"}`, nil},
		{"reset carries the head", `{"id":"90-91","type":"reset","event":"reset","data":{"reason":"expired"},"timestamp":"t"}`,
			[]seen{{"90-91", true, -1}}},
		{"an update of our row is not a delivery of it",
			`{"id":"8-8","type":"budget_fact_updated","event":"budget_fact_updated","data":{"description":"rtlab12.5"},"timestamp":"t"}`,
			[]seen{{"8-8", false, -1}}},
		{"another run's row", `{"id":"9-9","type":"budget_fact_created","event":"budget_fact_created","data":{"description":"rtlzz99.5"},"timestamp":"t"}`,
			[]seen{{"9-9", false, -1}}},
		{"someone else's row", `{"id":"9-10","type":"article_created","event":"article_created","data":{"id":1,"name":"{\"id\":\"x\"}"},"timestamp":"t"}`,
			[]seen{{"9-10", false, -1}}},
		{"batched", "[" + ours("10-1", 0) + "," + ours("10-2", 1) + "," +
			`{"id":"11-3","type":"article_updated","event":"article_updated","data":{"id":1},"timestamp":"t"}` + "," + ours("12-4", 2) + "]",
			[]seen{{"10-1", false, 0}, {"10-2", false, 1}, {"11-3", false, -1}, {"12-4", false, 2}}},
		{"empty batch", "[]", nil},
		{"cut short", `{"id":"1-1`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []seen
			sc.each([]byte(tc.frame), func(ev event) { got = append(got, seen{string(ev.id), ev.reset, ev.row}) })
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestTallyCountsOnce: a row counts once per client; again is a duplicate;
// the last id is what the client resumes from.
func TestTallyCountsOnce(t *testing.T) {
	t.Parallel()
	var tl tally
	var p progress
	tl.record(event{id: []byte("1-1"), row: 3}, 10, &p)
	tl.record(event{id: []byte("2-2"), row: 5000}, 11, &p) // grows the array
	tl.record(event{id: []byte("1-1"), row: 3}, 12, &p)
	tl.record(event{id: []byte("3-3"), row: -1}, 13, &p)
	tl.record(event{id: []byte("4-4"), reset: true, row: -1}, 14, &p)
	if tl.received != 3 || tl.dups != 1 || tl.resets != 1 || p.distinct.Load() != 2 {
		t.Errorf("received %d, dups %d, resets %d, distinct %d; want 3, 1, 1, 2", tl.received, tl.dups, tl.resets, p.distinct.Load())
	}
	if tl.got[3] != 10 || tl.got[5000] != 11 {
		t.Errorf("receipt times %d and %d, want 10 and 11 (the first receipt)", tl.got[3], tl.got[5000])
	}
	if tl.last() != "4-4" {
		t.Errorf("last id %q, want 4-4", tl.last())
	}
}

// TestHistQuantiles: within a bucket's width (about 3%) of the exact
// quantile, never above the maximum.
func TestHistQuantiles(t *testing.T) {
	t.Parallel()
	var h hist
	for us := int64(1); us <= 100000; us++ {
		h.add(us)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}} {
		got := h.quantile(tc.q)
		if got < tc.want || float64(got) > float64(tc.want)*1.035 {
			t.Errorf("quantile %v = %v, want %v to 3.5%% above", tc.q, got, tc.want)
		}
	}
	if got := h.quantiles(); got.Max != 100 || got.N != 100000 {
		t.Errorf("max %v ms, n %d; want 100 ms, 100000", got.Max, got.N)
	}
	for _, v := range []int64{0, 63, 64, 65, 1000, 1 << 40} {
		if up := upper(bucket(v)); up < v || (v >= 64 && float64(up) > float64(v)*1.04) {
			t.Errorf("value %d in a bucket up to %d", v, up)
		}
	}
}
