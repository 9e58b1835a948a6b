package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// gatewayDelivered reads rtgw_events_delivered_total (all transports) from
// the gateway's /metrics: what the gateway wrote, beside what the clients
// read. A gap between the two during a run that fell behind says which
// side was slow. It returns -1 when the metrics cannot be read.
func gatewayDelivered(ctx context.Context, metricsURL string) float64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return -1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return -1
	}
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "rtgw_events_delivered_total") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			sum += v
			found = true
		}
	}
	if !found || sc.Err() != nil {
		return -1
	}
	return sum
}

// metricsURL is -metrics-url, or /metrics on the gateway's address.
func metricsURL(o options) string {
	if o.metricsURL != "" {
		return o.metricsURL
	}
	return fmt.Sprintf("%s/metrics", strings.TrimRight(o.url, "/"))
}
