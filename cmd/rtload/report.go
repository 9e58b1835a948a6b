package main

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report is a run's outcome; -json prints it as is.
type report struct {
	Gateway       string  `json:"gateway"`
	WS            int     `json:"ws_clients"`
	SSE           int     `json:"sse_clients"`
	Batch         bool    `json:"batch_frames"`
	Sources       int     `json:"source_addresses"`
	Rate          float64 `json:"rate_rows_per_s"`
	RowsPerCommit int     `json:"rows_per_commit"`
	Duration      float64 `json:"duration_s"`
	CPUs          int     `json:"cpus"`
	LoadAvg       string  `json:"load_average"` // one-minute, at the first commit and at the end

	Connected      int       `json:"connected"`
	Refused        int64     `json:"refused"`
	ConnectFailed  int64     `json:"connect_failed"`
	ConnectWall    float64   `json:"connect_all_s"`
	ConnectLatency quantiles `json:"connect"`

	Commits        int64   `json:"commits"`
	CommitFailures int64   `json:"commit_failures"`
	Committed      int64   `json:"committed_rows"`
	WriteRate      float64 `json:"achieved_rows_per_s"`

	Expected      int64     `json:"expected_deliveries"`
	Delivered     int64     `json:"delivered"`
	Lost          int64     `json:"lost"`
	Duplicated    int64     `json:"duplicated"`
	ClientsLost   int       `json:"clients_with_loss"`
	ClientsDup    int       `json:"clients_with_duplicates"`
	PerClientMin  int64     `json:"per_client_min"`
	PerClientMax  int64     `json:"per_client_max"`
	Worst         []worst   `json:"worst_clients,omitempty"`
	Resets        int64     `json:"resets"`
	Reconnects    int64     `json:"reconnects"`
	PerSecond     float64   `json:"deliveries_per_s"`
	Latency       quantiles `json:"latency"`
	LatencyUnknow int64     `json:"latency_unknown"`

	Storm        *storm `json:"storm,omitempty"`
	RestartError string `json:"restart_error,omitempty"` // -restart-cmd failed

	GatewayPID       int     `json:"gateway_pid,omitempty"`
	GatewayCPU       float64 `json:"gateway_cpu_s"`
	GatewayCPUPerDel float64 `json:"gateway_cpu_us_per_delivery"`
	// The system part of GatewayCPU: on a gateway whose sends are most of
	// its work, the kernel's, and what grows when the sockets' kernel state
	// no longer fits the caches.
	GatewaySys       float64     `json:"gateway_sys_s"`
	GatewaySysPerDel float64     `json:"gateway_sys_us_per_delivery"`
	RSSBefore        int64       `json:"gateway_rss_kib_before"`
	RSSConnected     int64       `json:"gateway_rss_kib_connected"`
	RSSEnd           int64       `json:"gateway_rss_kib_end"`
	KiBPerConn       float64     `json:"gateway_kib_per_connection"`
	RSSHalf          int64       `json:"gateway_rss_kib_half"`                   // with the first half of the clients connected
	ConnectedHalf    int         `json:"connected_half"`                         // how many that was
	KiBPerConnAdded  float64     `json:"gateway_kib_per_connection_second_half"` // what each of the second half added
	GatewayNote      string      `json:"gateway_note,omitempty"`
	GatewayWrote     float64     `json:"gateway_delivered_metric"` // its rtgw_events_delivered_total over the run (-1: unknown)
	GatewayLag       *gatewayLag `json:"gateway_write_lag,omitempty"`
	ToolCPU          float64     `json:"tool_cpu_s"`
	ToolCPUPerDel    float64     `json:"tool_cpu_us_per_delivery"`
	ToolReader       string      `json:"tool_reader"` // how the WebSocket clients read: see readerName
}

// gatewayLag is the gateway's own view of latency over the run: from an
// event's commit to its write into a WebSocket or SSE socket, from its
// rtgw_delivery_lag_seconds histogram. The quantiles are interpolated
// within buckets (as Prometheus's histogram_quantile does); the shares are
// exact, 20 ms and 50 ms being bucket bounds.
type gatewayLag struct {
	N        uint64  `json:"n"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	Within20 float64 `json:"share_within_20ms"`
	Within50 float64 `json:"share_within_50ms"`
}

// worst is a client that lost or repeated rows.
type worst struct {
	Client    int   `json:"client"` // index: WebSocket clients first, then SSE
	Delivered int64 `json:"delivered"`
	Lost      int64 `json:"lost"`
	Dup       int64 `json:"duplicated"`
	FirstLost []int `json:"first_lost_rows,omitempty"` // the writer's row indexes
}

// storm is the reconnect storm: how long the clients cut by a restart took
// to be back and caught up.
type storm struct {
	Reconnected int       `json:"clients_reconnected"`
	Downtime    quantiles `json:"reconnect"`
	CaughtUp    float64   `json:"all_caught_up_s"` // from the restart (or the first cut) until the last client had every row committed before it was back
	From        string    `json:"from"`
}

func newReport(o options, ph phases, w *writer, committed []bool, rows int64, cs []*client, total int,
	refused, failed int64, connectWall time.Duration, clk clock) *report {
	r := &report{Gateway: o.url, WS: o.ws, SSE: o.sse, Batch: o.batch, Sources: o.sources, Rate: o.rate,
		RowsPerCommit: o.rowsPerCommit, Duration: o.duration.Seconds(), Connected: len(cs), Refused: refused,
		ConnectFailed: failed, ConnectWall: connectWall.Seconds(), Commits: w.commits.Load(),
		CommitFailures: w.failed.Load(), Committed: rows, Expected: rows * int64(len(cs)), PerClientMin: -1,
		CPUs: runtime.NumCPU(), LoadAvg: ph.loadStart + " -> " + ph.loadEnd}
	if d := w.ended.Sub(w.started).Seconds(); d > 0 {
		r.WriteRate = float64(rows) / d
	}
	// Clients in their -ws/-sse order, not the order they connected in, so
	// that reports name the same clients first from run to run.
	cs = slices.Clone(cs)
	slices.SortFunc(cs, func(a, b *client) int { return a.index - b.index })
	var lat, conn, down hist
	var caught int32
	var firstDown int32
	for _, c := range cs {
		conn.add(int64(c.connectTime - 1))
		r.Resets += c.resets
		r.Reconnects += c.reconnects
		var lost, got int64
		var firstLost []int
		for n, ok := range committed {
			if !ok {
				continue
			}
			if n >= len(c.got) || c.got[n] == 0 {
				lost++
				if len(firstLost) < 5 {
					firstLost = append(firstLost, n)
				}
				continue
			}
			got++
			if n < len(w.commitAt) && w.commitAt[n] != 0 {
				lat.add(int64(c.got[n] - w.commitAt[n]))
			} else {
				r.LatencyUnknow++
			}
		}
		r.Delivered += c.received
		r.Lost += lost
		r.Duplicated += c.dups
		if lost > 0 {
			r.ClientsLost++
		}
		if c.dups > 0 {
			r.ClientsDup++
		}
		if (lost > 0 || c.dups > 0) && len(r.Worst) < 20 {
			r.Worst = append(r.Worst, worst{Client: c.index, Delivered: c.received, Lost: lost, Dup: c.dups, FirstLost: firstLost})
		}
		if r.PerClientMin < 0 || c.received < r.PerClientMin {
			r.PerClientMin = c.received
		}
		r.PerClientMax = max(r.PerClientMax, c.received)
		if c.lastUp != 0 {
			down.add(int64(c.lastUp - c.lastDown))
			if firstDown == 0 || c.lastDown < firstDown {
				firstDown = c.lastDown
			}
			caught = max(caught, c.caughtUp(committed, w.commitAt))
		}
	}
	r.Latency, r.ConnectLatency = lat.quantiles(), conn.quantiles()
	if d := ph.endAt.Sub(ph.writeStartAt).Seconds(); d > 0 {
		r.PerSecond = float64(r.Delivered) / d
	}
	if down.n > 0 {
		from, what := firstDown, "first disconnect"
		if ph.restartAt != 0 {
			from, what = ph.restartAt, "restart command"
		}
		r.Storm = &storm{Reconnected: int(down.n), Downtime: down.quantiles(), From: what,
			CaughtUp: float64(caught-from) / 1e6}
	}

	if ph.restartErr != nil {
		r.RestartError = ph.restartErr.Error()
	}
	// A gateway restarted during the run (-restart-cmd, or by anything else:
	// its counters went back) counts from zero again, so its metrics say
	// nothing about the run as a whole; a restarted one that has already
	// written more than the first had would otherwise pass for a difference.
	restarted := ph.restartAt != 0 || ph.gwEnd.delivered < ph.gwStart.delivered ||
		ph.gwEnd.lag.count < ph.gwStart.lag.count
	r.GatewayWrote = -1
	if ph.gwStart.ok && ph.gwEnd.ok && !restarted {
		r.GatewayWrote = ph.gwEnd.delivered - ph.gwStart.delivered
	}
	if lag := ph.gwEnd.lag.since(ph.gwStart.lag); lag.count > 0 && !restarted {
		ms := func(s float64) float64 { return math.Round(s*1e5) / 100 }
		r.GatewayLag = &gatewayLag{N: lag.count, P50: ms(lag.quantile(0.5)), P99: ms(lag.quantile(0.99)),
			Within20: lag.share(0.020), Within50: lag.share(0.050)}
	}
	r.ToolCPU = (ph.toolEnd - ph.toolStart).Seconds()
	r.ToolReader = readerName(r.WS, strings.HasPrefix(r.Gateway, "https:"), ph.ringReadsEnd-ph.ringReadsStart)
	if r.Delivered > 0 {
		r.ToolCPUPerDel = r.ToolCPU * 1e6 / float64(r.Delivered)
	}
	switch {
	case ph.procErr != nil:
		r.GatewayNote = ph.procErr.Error()
	default:
		r.GatewayPID = ph.pid
		r.RSSBefore, r.RSSConnected, r.RSSEnd = ph.before.rss, ph.connected.rss, ph.end.rss
		r.KiBPerConn = float64(ph.connected.rss-ph.before.rss) / float64(len(cs))
		if n := len(cs) - ph.halfConns; ph.halfConns > 0 && n > 0 {
			r.RSSHalf, r.ConnectedHalf = ph.half.rss, ph.halfConns
			r.KiBPerConnAdded = float64(ph.connected.rss-ph.half.rss) / float64(n)
		}
		if ph.end.start != ph.writeStart.start {
			r.GatewayNote = "the gateway restarted during the run: its CPU time is unknown, its memory at the end is the new process's"
			break
		}
		r.GatewayCPU = (ph.end.cpu - ph.writeStart.cpu).Seconds()
		r.GatewaySys = (ph.end.sys - ph.writeStart.sys).Seconds()
		if r.Delivered > 0 {
			r.GatewayCPUPerDel = r.GatewayCPU * 1e6 / float64(r.Delivered)
			r.GatewaySysPerDel = r.GatewaySys * 1e6 / float64(r.Delivered)
		}
	}
	return r
}

// caughtUp is when c, after its last reconnect, held every row committed
// before that reconnect: the replay had reached it.
func (c *client) caughtUp(committed []bool, commitAt []int32) int32 {
	t := c.lastUp
	for n, ok := range committed {
		if ok && n < len(commitAt) && commitAt[n] != 0 && commitAt[n] <= c.lastUp && n < len(c.got) {
			t = max(t, c.got[n])
		}
	}
	return t
}

// refusedHint says how to start a gateway that lets the load in.
const refusedHint = " (refusals: start the gateway with GATEWAY_MAX_CONNECTIONS, GATEWAY_MAX_CONNECTIONS_PER_USER, " +
	"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS and GATEWAY_MAX_SSE_CLIENTS above the number of clients, or spread them with -sources)"

// verdict fails the run when a client lost or repeated a row, or could
// not connect: the exit status tells scripts.
func (r *report) verdict() error {
	if r.RestartError != "" {
		return fmt.Errorf("the restart command failed: %s", r.RestartError)
	}
	hint := ""
	if r.Refused > 0 {
		hint = refusedHint
	}
	if r.Lost > 0 || r.Duplicated > 0 || r.Refused > 0 || r.ConnectFailed > 0 {
		return fmt.Errorf("%d lost, %d duplicated, %d refused, %d failed to connect%s", r.Lost, r.Duplicated, r.Refused, r.ConnectFailed, hint)
	}
	return nil
}

// readerName says how the WebSocket clients were read, which is most of
// the tool's CPU: epoll loops reading the ready sockets through io_uring
// (ringCalls of them during the run), epoll loops with a read(2) each, or
// a goroutine per socket (not Linux, or TLS).
func readerName(ws int, tls bool, ringCalls int64) string {
	switch {
	case ws == 0:
		return ""
	case ringCalls > 0:
		return "epoll + io_uring"
	case pollAvailable && !tls:
		return "epoll + read(2)"
	default:
		return "goroutine per socket"
	}
}
