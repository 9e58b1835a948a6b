package main

import (
	"math"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

func promHist(count uint64, buckets map[float64]uint64) *dto.Histogram {
	h := &dto.Histogram{SampleCount: proto.Uint64(count)}
	for _, le := range []float64{.005, .01, .02, .05, .1} {
		h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: proto.Float64(le), CumulativeCount: proto.Uint64(buckets[le])})
	}
	return h
}

// TestLagHistogram: two transports' histograms are summed, a start sample
// is taken off an end sample, and quantiles and shares are read the way
// Prometheus's histogram_quantile reads them.
func TestLagHistogram(t *testing.T) {
	var start, end lagHist
	start.add(promHist(10, map[float64]uint64{.005: 10, .01: 10, .02: 10, .05: 10, .1: 10}))
	start.add(nil)
	// End: 10 more at or below 5 ms (20 in all), then 80 in (10, 20] ms, 9 in
	// (20, 50], 1 in (50, 100] and 5 past the last bound; split over two
	// transports.
	end.add(promHist(60, map[float64]uint64{.005: 20, .01: 20, .02: 55, .05: 60, .1: 60}))
	end.add(promHist(55, map[float64]uint64{.005: 0, .01: 0, .02: 45, .05: 49, .1: 50}))
	d := end.since(start)
	if d.count != 105 {
		t.Fatalf("count %d, want 105", d.count)
	}
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-9 }
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"p5", d.quantile(0.05), 0.005 * 5.25 / 10},         // in the first bucket, from 0
		{"p50", d.quantile(0.5), 0.01 + 0.01*(52.5-10)/80},  // in (10, 20] ms
		{"p95", d.quantile(0.95), 0.05 + 0.05*(99.75-99)/1}, // in (50, 100] ms
		{"p99", d.quantile(0.99), 0.1},                      // past the last bound: that bound
		{"within 20 ms", d.share(0.020), 90.0 / 105},
		{"within 15 ms", d.share(0.015), 50.0 / 105},
		{"within 1 s", d.share(1), 100.0 / 105},
	} {
		if !near(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if q := (lagHist{}).quantile(0.5); !math.IsNaN(q) {
		t.Errorf("quantile of an empty histogram = %v, want NaN", q)
	}
}
