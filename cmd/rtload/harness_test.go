package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if builtBin != "" {
		_ = os.RemoveAll(filepath.Dir(builtBin)) // the gateway binary built for the tests
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildOut  []byte
)

// gatewayBinary builds the real gateway once per test binary: the tool is
// meant for a gateway in another process, so the tests run it as one.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rtload-test-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "gateway")
		buildOut, buildErr = exec.Command("go", "build", "-o", builtBin, "github.com/budget-rt/gateway/cmd/gateway").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build the gateway: %v\n%s", buildErr, buildOut)
	}
	return builtBin
}

// gatewayProc is the gateway binary serving a test database.
type gatewayProc struct {
	bin, addr, db string
	env           []string
	cmd           *exec.Cmd
	exited        chan struct{}
	stderr        *bytes.Buffer
}

// newDB is a fresh database with the demo's tables, tracked as the demo
// tracks them (what -setup does).
func newDB(t *testing.T) string {
	t.Helper()
	db := pgtest.NewDatabase(t)
	if err := notify.InstallDemo(t.Context(), db); err != nil {
		t.Fatalf("set up the database: %v", err)
	}
	return db
}

// startGateway runs `gateway serve` on a free loopback port, with limits
// raised for load as the README says, and waits until it is ready.
func startGateway(t *testing.T, db string, extra ...string) *gatewayProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	g := &gatewayProc{bin: gatewayBinary(t), addr: addr, db: db, stderr: &bytes.Buffer{}}
	g.env = append([]string{"PATH=" + os.Getenv("PATH"), "DATABASE_URL=" + db, "GATEWAY_ADDR=" + addr,
		"GATEWAY_LOG_LEVEL=warn", "GATEWAY_MAX_CONNECTIONS=1000", "GATEWAY_MAX_CONNECTIONS_PER_USER=1000",
		"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=1000", "GATEWAY_MAX_SSE_CLIENTS=1000", "GATEWAY_SHUTDOWN_TIMEOUT=3s"}, extra...)
	g.cmd = exec.Command(g.bin, "serve")
	g.cmd.Env = g.env
	g.cmd.Stderr = g.stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start the gateway: %v", err)
	}
	g.exited = make(chan struct{})
	go func() { _ = g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.exited
		if t.Failed() {
			t.Logf("gateway stderr:\n%s", g.stderr)
		}
	})
	if _, err := waitReady(t.Context(), g.url()); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *gatewayProc) url() string { return "http://" + g.addr }

// runTool runs the tool as its command line does, with -json, and
// returns the report and run's error (the verdict).
func runTool(t *testing.T, args ...string) (*report, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), append(args, "-json"), nil, &out, &errOut)
	if out.Len() == 0 {
		t.Fatalf("rtload printed no report: %v\n%s", err, errOut.String())
	}
	var r report
	if jerr := json.Unmarshal(out.Bytes(), &r); jerr != nil {
		t.Fatalf("report is not JSON: %v\n%s", jerr, out.String())
	}
	t.Logf("report: %s", oneLine(out.String()))
	if errOut.Len() > 0 {
		t.Logf("rtload stderr:\n%s", errOut.String())
	}
	return &r, err
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// rowsOf counts the rows the tool wrote into facts.
func rowsOf(t *testing.T, db string) int64 {
	t.Helper()
	n, err := countRows(db)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// countRows is rowsOf for goroutines other than the test's.
func countRows(db string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, `SELECT count(*) FROM facts WHERE description LIKE 'rtl%'`).Scan(&n)
	return n, err
}

// checkConsistent checks what every report must satisfy.
func checkConsistent(t *testing.T, r *report) {
	t.Helper()
	if r.Expected != r.Committed*int64(r.Connected) {
		t.Errorf("expected %d, want committed %d x connected %d", r.Expected, r.Committed, r.Connected)
	}
	if r.Delivered != r.Expected-r.Lost+r.Duplicated {
		t.Errorf("delivered %d, want expected %d - lost %d + duplicated %d", r.Delivered, r.Expected, r.Lost, r.Duplicated)
	}
	if got := r.Latency.N + r.LatencyUnknow; got != r.Expected-r.Lost {
		t.Errorf("latency samples %d (+%d unknown), want one per distinct delivery, %d", r.Latency.N, r.LatencyUnknow, r.Expected-r.Lost)
	}
	l := r.Latency
	if !(l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) {
		t.Errorf("latency quantiles out of order: %+v", l)
	}
	if r.ConnectLatency.N != int64(r.Connected) {
		t.Errorf("connect samples %d, want %d", r.ConnectLatency.N, r.Connected)
	}
	if r.ToolCPU <= 0 || r.PerSecond <= 0 {
		t.Errorf("tool CPU %v s, %v deliveries/s: want both above 0", r.ToolCPU, r.PerSecond)
	}
}

// seedEvent commits a row that is not the tool's and returns its event's
// id, once the gateway reports it as its head.
func seedEvent(t *testing.T, db string, g *gatewayProc) string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), `INSERT INTO facts (article_id, amount, description) VALUES (1, 1, 'seed')`); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if head, err := waitReady(t.Context(), g.url()); err == nil && head != "" {
			return head
		}
	}
	t.Fatal("the gateway did not report the seed event as its head within 10s")
	return ""
}
