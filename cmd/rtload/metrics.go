package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// gwSample is what the tool reads from the gateway's /metrics at the start
// and at the end of a run.
type gwSample struct {
	ok        bool
	delivered float64 // rtgw_events_delivered_total, every transport
	lag       lagHist // rtgw_delivery_lag_seconds of the WebSocket and SSE transports, summed
}

// lagHist is a cumulative histogram: bucket upper bounds (seconds,
// ascending) and how many observations fell at or below each, plus the
// total (the +Inf bucket).
type lagHist struct {
	le    []float64
	cum   []uint64
	count uint64
}

// scrapeGateway reads the gateway's /metrics. The delivered count tells
// what the gateway wrote beside what the clients read (a gap during a run
// that fell behind says which side was slow); the lag histogram measures
// commit to the write into the socket on the gateway's side, which on a
// shared machine the tool's own commit-to-receipt latency cannot separate
// from the time the tool takes to read. ok is false when the metrics cannot
// be read.
func scrapeGateway(ctx context.Context, metricsURL string) gwSample {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return gwSample{}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return gwSample{}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return gwSample{}
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return gwSample{}
	}
	var s gwSample
	if f := fams["rtgw_events_delivered_total"]; f != nil {
		for _, m := range f.GetMetric() {
			s.delivered += m.GetCounter().GetValue()
		}
		s.ok = true
	}
	if f := fams["rtgw_delivery_lag_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			if tr := label(m, "transport"); tr == "ws" || tr == "sse" {
				s.lag.add(m.GetHistogram())
			}
		}
	}
	return s
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// add sums another transport's histogram into h (the same buckets).
func (h *lagHist) add(p *dto.Histogram) {
	if p == nil {
		return
	}
	for _, b := range p.GetBucket() {
		i, found := slices.BinarySearch(h.le, b.GetUpperBound())
		if !found {
			h.le = slices.Insert(h.le, i, b.GetUpperBound())
			h.cum = slices.Insert(h.cum, i, 0)
		}
		h.cum[i] += b.GetCumulativeCount()
	}
	h.count += p.GetSampleCount()
}

// since is h minus an earlier sample of the same histogram: the
// observations made in between.
func (h lagHist) since(start lagHist) lagHist {
	d := lagHist{le: h.le, cum: make([]uint64, len(h.cum)), count: h.count - min(start.count, h.count)}
	for i, le := range h.le {
		if j, ok := slices.BinarySearch(start.le, le); ok {
			d.cum[i] = h.cum[i] - min(start.cum[j], h.cum[i])
		} else {
			d.cum[i] = h.cum[i]
		}
	}
	return d
}

// quantile estimates the q-quantile in seconds as Prometheus's
// histogram_quantile does: linearly within the bucket it falls in (the
// lowest bucket from 0). Past the last finite bound it returns that bound.
func (h lagHist) quantile(q float64) float64 {
	if h.count == 0 || len(h.le) == 0 {
		return math.NaN()
	}
	rank := q * float64(h.count)
	lower, below := 0.0, uint64(0)
	for i, le := range h.le {
		if float64(h.cum[i]) >= rank {
			if h.cum[i] == below {
				return le
			}
			return lower + (le-lower)*(rank-float64(below))/float64(h.cum[i]-below)
		}
		lower, below = le, h.cum[i]
	}
	return h.le[len(h.le)-1]
}

// share estimates the fraction of observations at or below x seconds:
// exact when x is a bucket bound, else interpolated within its bucket.
func (h lagHist) share(x float64) float64 {
	if h.count == 0 {
		return math.NaN()
	}
	lower, below := 0.0, uint64(0)
	for i, le := range h.le {
		if x <= le {
			n := float64(below) + float64(h.cum[i]-below)*(x-lower)/(le-lower)
			return n / float64(h.count)
		}
		lower, below = le, h.cum[i]
	}
	return float64(below) / float64(h.count)
}

// metricsURL is -metrics-url, or /metrics on the gateway's address.
func metricsURL(o options) string {
	if o.metricsURL != "" {
		return o.metricsURL
	}
	return fmt.Sprintf("%s/metrics", strings.TrimRight(o.url, "/"))
}
