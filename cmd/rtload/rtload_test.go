package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoadToolCountsEveryDelivery: a small run against the real gateway,
// with authentication (a token minted per client) and the per-address
// limit low enough that only spreading the clients over source addresses
// lets them all in. Every client receives every committed row once, and
// the report's numbers agree with each other and with the table.
func TestLoadToolCountsEveryDelivery(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	const secret = "rtload-test-secret"
	g := startGateway(t, db, "GATEWAY_JWT_SECRET="+secret, "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=10")

	r, err := runTool(t, "-url", g.url(), "-db", db, "-ws", "20", "-sse", "5", "-sources", "3",
		"-jwt-secret", secret, "-rate", "200", "-rows-per-commit", "2", "-duration", "1500ms", "-grace", "10s")
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	checkConsistent(t, r)
	if r.Connected != 25 || r.Refused != 0 {
		t.Fatalf("connected %d, refused %d: want 25 and 0", r.Connected, r.Refused)
	}
	if db := rowsOf(t, db); r.Committed != db || r.Committed < 100 {
		t.Errorf("committed %d, table holds %d: want equal, at least 100", r.Committed, db)
	}
	if r.Commits*2 != r.Committed {
		t.Errorf("commits %d of 2 rows, committed rows %d", r.Commits, r.Committed)
	}
	if r.Delivered != r.Committed*25 || r.Lost != 0 || r.Duplicated != 0 {
		t.Errorf("delivered %d, lost %d, duplicated %d: want %d, 0, 0", r.Delivered, r.Lost, r.Duplicated, r.Committed*25)
	}
	if r.PerClientMin != r.Committed || r.PerClientMax != r.Committed {
		t.Errorf("per client %d..%d, want %d each", r.PerClientMin, r.PerClientMax, r.Committed)
	}
	// The gateway counts a frame when its write returns, the clients when
	// they read it: equal once everything arrived, but this checks that the
	// tool reads the metric, not the gateway's accounting.
	if d := r.GatewayWrote - float64(r.Delivered); r.GatewayWrote <= 0 || d*d > 0.01*float64(r.Delivered*r.Delivered) {
		t.Errorf("the gateway's metrics count %v deliveries, the clients %d: want within 10%%", r.GatewayWrote, r.Delivered)
	}
	// The gateway's own commit-to-write latency covers the same deliveries
	// (WebSocket and SSE; every one of this run) and is a distribution.
	switch l := r.GatewayLag; {
	case l == nil:
		t.Errorf("no gateway commit-to-write latency in the report")
	case l.N != uint64(r.GatewayWrote):
		t.Errorf("gateway latency counts %d deliveries, its delivered metric %v: want equal", l.N, r.GatewayWrote)
	case !(l.P50 > 0 && l.P50 <= l.P99) || !(l.Within20 > 0 && l.Within20 <= l.Within50 && l.Within50 <= 1):
		t.Errorf("gateway latency p50 %v, p99 %v ms, within 20/50 ms %v/%v: want 0 < p50 <= p99, 0 < shares <= 1 ascending",
			l.P50, l.P99, l.Within20, l.Within50)
	}
	if r.Reconnects != 0 || r.Resets != 0 || r.Storm != nil {
		t.Errorf("reconnects %d, resets %d, storm %v: want none", r.Reconnects, r.Resets, r.Storm)
	}
	if r.GatewayPID != 0 && r.GatewayPID != g.cmd.Process.Pid {
		t.Errorf("gateway pid %d, want %d", r.GatewayPID, g.cmd.Process.Pid)
	}
	if r.GatewayNote != "" || r.RSSConnected <= 0 {
		t.Errorf("gateway figures missing: note %q, RSS %d KiB", r.GatewayNote, r.RSSConnected)
	}
	// Memory is sampled with the first half of the clients connected too,
	// so that what each of the second half added can be told apart from
	// the gateway's one-time growth.
	if r.ConnectedHalf != r.Connected/2 || r.RSSHalf <= 0 ||
		r.KiBPerConnAdded != float64(r.RSSConnected-r.RSSHalf)/float64(r.Connected-r.ConnectedHalf) {
		t.Errorf("half-way sample: %d clients, RSS %d KiB, %v KiB each after: want %d clients, RSS > 0, (%d - %d) / %d",
			r.ConnectedHalf, r.RSSHalf, r.KiBPerConnAdded, r.Connected/2, r.RSSConnected, r.RSSHalf, r.Connected-r.Connected/2)
	}
	if r.GatewayCPU > 0 && r.GatewayCPUPerDel != r.GatewayCPU*1e6/float64(r.Delivered) {
		t.Errorf("gateway µs per delivery %v, want %v s / %d", r.GatewayCPUPerDel, r.GatewayCPU, r.Delivered)
	}
	if r.GatewaySys < 0 || r.GatewaySys > r.GatewayCPU || r.GatewaySysPerDel != r.GatewaySys*1e6/float64(r.Delivered) {
		t.Errorf("gateway kernel time %v s (%v µs per delivery), want within its CPU time %v s, per delivery over %d",
			r.GatewaySys, r.GatewaySysPerDel, r.GatewayCPU, r.Delivered)
	}
}

// faulty makes one client misbehave against the real gateway: its
// first connection is cut (from the client's side) after it has read
// cutAfter frames, and its reconnect asks for resumeFrom instead of its
// last id.
type faulty struct {
	transport
	cutAfter   int
	resumeFrom func() string
	opens      atomic.Int32
}

func (f *faulty) open(ctx context.Context, lastID string) (stream, error) {
	if f.opens.Add(1) > 1 {
		lastID = f.resumeFrom()
	}
	s, err := f.transport.open(ctx, lastID)
	if err != nil || f.opens.Load() > 1 {
		return s, err
	}
	return &cutStream{stream: s, left: f.cutAfter}, nil
}

type cutStream struct {
	stream
	left int
}

func (s *cutStream) read(fn func([]byte)) error {
	return s.stream.read(func(b []byte) {
		fn(b)
		if s.left--; s.left == 0 {
			s.stream.close()
		}
	})
}

// TestLoadToolDetectsLossAndDuplicates: the count is only worth something
// if it sees what goes wrong. Against the real gateway, one client
// resumes from the head the run started at (the gateway rightly replays
// what it already had: duplicates) and another resumes without an id
// after rows were committed while it was away (it misses them: loss).
// The other clients are clean, and the run fails.
func TestLoadToolDetectsLossAndDuplicates(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	g := startGateway(t, db, "GATEWAY_INSECURE_NO_AUTH=true")
	// An event before the run, so that there is an id to resume from.
	if _, err := countRows(db); err != nil {
		t.Fatal(err)
	}
	head := seedEvent(t, db, g)
	o, err := parseFlags([]string{"-url", g.url(), "-db", db, "-ws", "4", "-sse", "1", "-rate", "200",
		"-duration", "1500ms", "-grace", "3s"}, nil, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var away atomic.Int64 // rows the writer committed while client 1 was away, at least
	o.wrap = func(i int, tr transport) transport {
		switch i {
		case 0: // resumes from the start: everything it had comes again
			return &faulty{transport: tr, cutAfter: 40, resumeFrom: func() string { return head }}
		case 1: // resumes without an id once rows went by: they are lost
			return &faulty{transport: tr, cutAfter: 40, resumeFrom: func() string {
				before, err := countRows(db)
				now := before
				for deadline := time.Now().Add(10 * time.Second); err == nil && now < before+20 && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
					now, err = countRows(db)
				}
				away.Store(now - before)
				return ""
			}}
		}
		return tr
	}
	r, err := load(t.Context(), slog.New(slog.DiscardHandler), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.verdict() == nil {
		t.Errorf("verdict nil, want an error for loss and duplicates")
	}
	checkConsistent(t, r)
	if r.ClientsDup != 1 || r.Duplicated < 30 {
		t.Errorf("%d clients with %d duplicates, want 1 client with at least 30 (of the first 40 frames)", r.ClientsDup, r.Duplicated)
	}
	if r.ClientsLost != 1 || r.Lost < away.Load() || away.Load() < 20 {
		t.Errorf("%d clients lost %d rows, want 1 client losing at least the %d committed while it was away (>= 20)",
			r.ClientsLost, r.Lost, away.Load())
	}
	if len(r.Worst) != 2 || r.Worst[0].Client != 0 || r.Worst[0].Dup != r.Duplicated || r.Worst[0].Lost != 0 ||
		r.Worst[1].Client != 1 || r.Worst[1].Lost != r.Lost || r.Worst[1].Dup != 0 {
		t.Errorf("worst clients %+v, want client 0 with the duplicates, client 1 with the loss", r.Worst)
	}
	if r.Reconnects != 2 {
		t.Errorf("reconnects %d, want 2", r.Reconnects)
	}
}

// TestLoadToolAcrossRestart: -restart-cmd stops the gateway (SIGTERM)
// mid-run and starts another on the same port while the writer goes on
// committing. Every client reconnects with its last id and ends with
// every row once; the report shows the storm.
func TestLoadToolAcrossRestart(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	g := startGateway(t, db, "GATEWAY_INSECURE_NO_AUTH=true")
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(g.cmd.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	for _, kv := range g.env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&script, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
	}
	// The old process is the test's child: the test reaps it, so kill -0
	// fails once it has exited. The loop is bounded (10 s).
	fmt.Fprintf(&script, `pid=$(cat '%[1]s')
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
'%[2]s' serve >>'%[3]s' 2>&1 &
echo $! > '%[1]s'
`, pidFile, g.bin, filepath.Join(dir, "gateway.log"))
	restart := filepath.Join(dir, "restart.sh")
	if err := os.WriteFile(restart, []byte(script.String()), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b, _ := os.ReadFile(pidFile)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid != g.cmd.Process.Pid {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "gateway.log"))
			t.Logf("restarted gateway's log:\n%s", log)
		}
	})

	r, err := runTool(t, "-url", g.url(), "-db", db, "-ws", "20", "-sse", "5", "-rate", "100",
		"-duration", "3s", "-restart-cmd", restart, "-restart-at", "1s", "-grace", "15s")
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	checkConsistent(t, r)
	if r.Delivered != r.Committed*25 || r.Lost != 0 || r.Duplicated != 0 || r.Resets != 0 {
		t.Errorf("delivered %d, lost %d, duplicated %d, resets %d: want %d, 0, 0, 0", r.Delivered, r.Lost,
			r.Duplicated, r.Resets, r.Committed*25)
	}
	if r.Storm == nil || r.Storm.Reconnected != 25 || r.Storm.From != "restart command" || !(r.Storm.CaughtUp > 0) {
		t.Fatalf("storm %+v, want all 25 clients reconnected after the restart command", r.Storm)
	}
	if r.Reconnects < 25 {
		t.Errorf("reconnects %d, want at least 25", r.Reconnects)
	}
	// The new gateway's /metrics count from its start: nothing about the run.
	if r.GatewayWrote != -1 || r.GatewayLag != nil {
		t.Errorf("gateway delivered metric %v, latency %+v across a restart: want unknown (-1, none)", r.GatewayWrote, r.GatewayLag)
	}
	if !strings.Contains(r.GatewayNote, "restarted") {
		t.Errorf("gateway note %q, want it to say the gateway restarted", r.GatewayNote)
	}
	select {
	case <-g.exited:
	default:
		t.Errorf("the first gateway is still running")
	}
}
