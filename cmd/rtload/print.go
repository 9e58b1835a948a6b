package main

import (
	"fmt"
	"io"
)

// print writes the report for people, ending with one Markdown table row
// to paste into the README's tables.
func (r *report) print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	frames := "one event per frame"
	if r.Batch {
		frames = "batched frames"
	}
	p("rtload: %d WebSocket + %d SSE clients over %d source addresses, %s; %.0f rows/s (%d per commit) for %.0fs",
		r.WS, r.SSE, r.Sources, frames, r.Rate, r.RowsPerCommit, r.Duration)
	p("machine      %d CPUs, load average %s (one minute, at the first commit and at the end)", r.CPUs, r.LoadAvg)
	p("")
	p("connect      %d connected, %d refused, %d failed, all in %.2fs; each %s", r.Connected, r.Refused,
		r.ConnectFailed, r.ConnectWall, q(r.ConnectLatency))
	p("writer       %d rows committed in %d commits (%d failed), %.0f rows/s achieved", r.Committed, r.Commits,
		r.CommitFailures, r.WriteRate)
	p("deliveries   %d of %d expected: lost %d (%d clients), duplicated %d (%d clients); per client %d..%d",
		r.Delivered, r.Expected, r.Lost, r.ClientsLost, r.Duplicated, r.ClientsDup, r.PerClientMin, r.PerClientMax)
	for _, c := range r.Worst {
		p("             client %d: delivered %d, lost %d (rows %v...), duplicated %d", c.Client, c.Delivered, c.Lost,
			c.FirstLost, c.Dup)
	}
	p("rate         %.0f deliveries/s", r.PerSecond)
	if r.GatewayWrote >= 0 {
		p("             the gateway counted %.0f deliveries written (rtgw_events_delivered_total, live events of every writer)", r.GatewayWrote)
	}
	p("latency      commit to receipt %s", q(r.Latency))
	if l := r.GatewayLag; l != nil {
		p("             commit to the gateway's write into the socket (its rtgw_delivery_lag_seconds, %d deliveries): p50 %.1f ms, p99 %.1f ms; %.2f%% within 20 ms, %.2f%% within 50 ms",
			l.N, l.P50, l.P99, 100*l.Within20, 100*l.Within50)
	}
	p("reconnects   %d (resets %d)", r.Reconnects, r.Resets)
	if s := r.Storm; s != nil {
		p("storm        %d clients back, cut to reconnected %s; all caught up %.2fs after the %s", s.Reconnected,
			q(s.Downtime), s.CaughtUp, s.From)
	}
	if r.RestartError != "" {
		p("restart      the command failed: %s", r.RestartError)
	}
	if r.GatewayNote != "" {
		p("gateway      %s", r.GatewayNote)
	}
	if r.RSSBefore > 0 {
		p("gateway      RSS %d KiB idle, %d KiB connected (%.1f KiB per connection), %d KiB at the end",
			r.RSSBefore, r.RSSConnected, r.KiBPerConn, r.RSSEnd)
	}
	if r.RSSHalf > 0 {
		p("gateway      RSS %d KiB with half the clients: %.1f KiB for each of the second half", r.RSSHalf, r.KiBPerConnAdded)
	}
	if r.GatewayCPU > 0 {
		p("gateway CPU  %.2fs: %.2f µs per delivery, %.2f of them in the kernel", r.GatewayCPU, r.GatewayCPUPerDel, r.GatewaySysPerDel)
	}
	reader := ""
	if r.ToolReader != "" {
		reader = " (WebSocket reads: " + r.ToolReader + ")"
	}
	p("tool CPU     %.2fs: %.2f µs per delivery%s", r.ToolCPU, r.ToolCPUPerDel, reader)
	p("")
	p("| clients | rows/s | delivered/s | lost | dup | p50 | p90 | p99 | max | gateway µs/delivery | KiB/conn | tool µs/delivery |")
	p("| %d ws + %d sse | %.0f | %.0f | %d | %d | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.2f | %.1f | %.2f |",
		r.WS, r.SSE, r.WriteRate, r.PerSecond, r.Lost, r.Duplicated, r.Latency.P50, r.Latency.P90, r.Latency.P99,
		r.Latency.Max, r.GatewayCPUPerDel, r.KiBPerConn, r.ToolCPUPerDel)
}

func q(x quantiles) string {
	return fmt.Sprintf("p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms", x.P50, x.P90, x.P99, x.Max)
}
