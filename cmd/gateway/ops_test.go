package main

// Tests of the operator's commands: `gateway demo`, `gateway tail` and
// `gateway healthcheck`, in-process through run and as the built binary.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/notify/pgtest"
)

// lineWriter collects what a command writes, line by line, for tests that
// wait for a line.
type lineWriter struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	added   chan struct{} // signalled (not counted) on every new line
}

func newLineWriter() *lineWriter { return &lineWriter{added: make(chan struct{}, 1)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.lines = append(w.lines, string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	w.mu.Unlock()
	select {
	case w.added <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *lineWriter) snapshot() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.lines)
}

func (w *lineWriter) String() string { return strings.Join(w.snapshot(), "\n") }

// waitLines returns the first n lines once there are that many.
func (w *lineWriter) waitLines(t testing.TB, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if l := w.snapshot(); len(l) >= n {
			return l[:n]
		}
		select {
		case <-w.added:
		case <-deadline:
			t.Fatalf("got %d lines within %v, want %d:\n%s", len(w.snapshot()), timeout, n, w.String())
		}
	}
}

// waitMatch returns the submatches of the first line matching re.
func (w *lineWriter) waitMatch(t testing.TB, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(timeout)
	for {
		for _, l := range w.snapshot() {
			if m := rx.FindStringSubmatch(l); m != nil {
				return m
			}
		}
		select {
		case <-w.added:
		case <-deadline:
			t.Fatalf("no line matching %q within %v:\n%s", re, timeout, w.String())
		}
	}
}

// tailRun is `gateway tail` running in-process.
type tailRun struct {
	out, errs *lineWriter
	cancel    context.CancelFunc
	done      chan error
}

func startTail(t *testing.T, environ []string, args ...string) *tailRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &tailRun{out: newLineWriter(), errs: newLineWriter(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx, append([]string{"tail"}, args...), environ, r.out, r.errs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("tail returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("tail still running 10s after cancel")
		}
		if t.Failed() {
			t.Logf("tail stderr:\n%s", r.errs.String())
		}
	})
	return r
}

// waitClients waits until the gateway's hub has n clients attached: the
// readiness signal of a stream client.
func waitClients(t testing.TB, g *gw, n int) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%d clients attached", n), func() bool {
		_, body, _ := getJSON(g.base + "/readyz")
		return body["clients"] == float64(n)
	})
}

// tailLine is the readable format: time, id, type, summary.
var tailLine = regexp.MustCompile(`^(\d\d:\d\d:\d\d\.\d{3})  (\d+-\d+) +(\S+) +(.*)$`)

// One readable line per event, in commit order: the commit time (local),
// the id, the type and the data as key=value without nulls; no colour
// when stdout is not a terminal.
func TestTailPrintsEvents(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	ws := dialWS(t, g, "")
	tr := startTail(t, nil, "--url", g.base)
	waitClients(t, g, 2)

	fact := db.insertFact(t, 1234, "2026-01-15")
	db.exec(t, `INSERT INTO articles (name) VALUES ('Rent')`)
	db.exec(t, `UPDATE articles SET name = 'Flat rent' WHERE name = 'Rent'`)
	db.exec(t, `DELETE FROM articles`)
	frames := ws.take(t, 4)
	lines := tr.out.waitLines(t, 4, 20*time.Second)

	wantTypes := []string{"budget_fact_created", "article_created", "article_updated", "article_deleted"}
	for i, l := range lines {
		if strings.Contains(l, "\x1b") {
			t.Fatalf("line %q has colour codes although stdout is not a terminal", l)
		}
		m := tailLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line %d %q is not \"time  id  type  summary\"", i, l)
		}
		f := frames[i]
		ts, err := time.Parse(time.RFC3339Nano, f.Timestamp)
		if err != nil {
			t.Fatal(err)
		}
		if m[1] != ts.Local().Format("15:04:05.000") || m[2] != f.ID || m[3] != wantTypes[i] || f.Type != wantTypes[i] {
			t.Fatalf("line %d %q: want time %s, id %s, type %s", i, l, ts.Local().Format("15:04:05.000"), f.ID, wantTypes[i])
		}
	}
	summary := func(i int) string { return tailLine.FindStringSubmatch(lines[i])[4] }
	if s, want := summary(0), fmt.Sprintf("id=%d amount=1234 fact_date=2026-01-15 article_id=1 record_type=fact", fact); s != want {
		t.Errorf("fact summary %q, want %q (null description left out)", s, want)
	}
	if s := summary(2); !strings.Contains(s, `name="Flat rent"`) || !strings.Contains(s, "type=expense") {
		t.Errorf("article_updated summary %q, want the quoted name and the type", s)
	}
	if s := summary(3); !regexp.MustCompile(`^id=\d+ `).MatchString(s) || !strings.Contains(s, `name="Flat rent"`) {
		t.Errorf("article_deleted summary %q, want the key first, then the row as it was", s)
	}

	// --color always paints the type; the plain text stays the same.
	ct := &tailer{color: true}
	f0 := frames[0]
	colored := ct.line("budget_fact_created", tailFrame{ID: f0.ID, Type: f0.Type, Data: f0.Data, Timestamp: f0.Timestamp})
	if !strings.Contains(colored, ansiGreen+"budget_fact_created") {
		t.Errorf("coloured line %q lacks the green type", colored)
	}
	if plain := regexp.MustCompile("\x1b\\[[0-9;]*m").ReplaceAllString(colored, ""); plain != lines[0]+"\n" {
		t.Errorf("coloured line without its codes is %q, want %q", plain, lines[0])
	}
}

// --json prints each event's JSON object, as the other transports carry it;
// --types filters on the server: other types committed in between never
// show, as the marker that follows them proves.
func TestTailJSONAndTypes(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	ws := dialWS(t, g, "")
	tr := startTail(t, nil, "--url", g.base, "--json", "--types", "article_created,article_deleted")
	waitClients(t, g, 2)

	db.insertFact(t, 1, "2026-01-01")
	db.exec(t, `INSERT INTO articles (name) VALUES ('a1')`)
	db.exec(t, `UPDATE articles SET name = 'a2'`)
	db.insertFact(t, 2, "2026-01-02")
	db.exec(t, `DELETE FROM articles`)
	db.exec(t, `INSERT INTO articles (name) VALUES ('marker')`)
	all := ws.take(t, 6)
	var want []frame
	for _, f := range all {
		if f.Type == "article_created" || f.Type == "article_deleted" {
			want = append(want, f)
		}
	}
	lines := tr.out.waitLines(t, len(want), 20*time.Second)
	for i, l := range lines {
		var f frame
		if err := json.Unmarshal([]byte(l), &f); err != nil {
			t.Fatalf("line %d %q is not JSON: %v", i, l, err)
		}
		if f.ID != want[i].ID || f.Type != want[i].Type || string(f.Data) != string(want[i].Data) || f.Timestamp != want[i].Timestamp {
			t.Fatalf("line %d: %s, want the WebSocket's frame %s %s %s", i, l, want[i].ID, want[i].Type, want[i].Data)
		}
	}
	if last := lines[len(lines)-1]; !strings.Contains(last, `"name":"marker"`) {
		t.Fatalf("last line %s, want the marker", last)
	}
}

// The gateway restarts under the tail: it says so, reconnects on its own
// with Last-Event-ID and prints everything committed before, during and
// after the restart exactly once, in order.
func TestTailResumesAcrossRestart(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	addr := pickAddr(t)
	g := startGatewayAt(t, db, addr)
	tr := startTail(t, nil, "--url", "http://"+addr, "--json")
	waitClients(t, g, 1)

	amounts := func(lines []string) []int {
		var out []int
		for _, l := range lines {
			var f struct {
				Type string
				Data struct{ Amount int }
			}
			if err := json.Unmarshal([]byte(l), &f); err != nil || f.Type != "budget_fact_created" {
				t.Fatalf("line %q: %v, want a budget_fact_created", l, err)
			}
			out = append(out, f.Data.Amount)
		}
		return out
	}
	for i := 1; i <= 3; i++ {
		db.insertFact(t, i, "2026-01-05")
	}
	tr.out.waitLines(t, 3, 20*time.Second)

	g.stop(t)
	for i := 4; i <= 6; i++ { // written while no gateway runs
		db.insertFact(t, i, "2026-01-05")
	}
	tr.errs.waitMatch(t, `^tail: the gateway at http://\S+ is down \(.*\); retrying until it is back after event \d+-\d+$`, 20*time.Second)
	g = startGatewayAt(t, db, addr)
	for i := 7; i <= 9; i++ {
		db.insertFact(t, i, "2026-01-05")
	}
	lines := tr.out.waitLines(t, 9, 30*time.Second)
	if got, want := amounts(lines), []int{1, 2, 3, 4, 5, 6, 7, 8, 9}; !slices.Equal(got, want) {
		t.Fatalf("amounts %v, want %v: each once, in order", got, want)
	}
	db.insertFact(t, 10, "2026-01-05")
	if got := amounts(tr.out.waitLines(t, 10, 20*time.Second)[9:]); got[0] != 10 {
		t.Fatalf("after the restart's events came %v, want the marker 10", got)
	}
	if !strings.Contains(tr.errs.String(), "tail: stream ended") {
		t.Errorf("stderr does not say the stream ended:\n%s", tr.errs.String())
	}
}

// A tail started before the gateway says that it cannot reach it, keeps
// trying, and follows the gateway once it is up.
func TestTailWaitsForGateway(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	addr := pickAddr(t)
	tr := startTail(t, nil, "--url", "http://"+addr)
	tr.errs.waitMatch(t, `^tail: the gateway at http://`+regexp.QuoteMeta(addr)+` is not reachable \(dial tcp .*connection refused\); retrying until it is back$`, 20*time.Second)
	g := startGatewayAt(t, db, addr)
	waitClients(t, g, 1)
	db.insertFact(t, 77, "2026-01-07")
	if l := tr.out.waitLines(t, 1, 20*time.Second)[0]; !strings.Contains(l, "budget_fact_created") || !strings.Contains(l, "amount=77") {
		t.Fatalf("line %q, want the fact", l)
	}
}

// A refused token ends the tail with a message that says what to do; a
// good one from GATEWAY_TOKEN (a Bearer access token) is accepted.
func TestTailRefusesBadToken(t *testing.T) {
	t.Parallel()
	const secret = "tail-test-secret"
	db := newTestDB(t)
	g := startGateway(t, db, "GATEWAY_JWT_SECRET="+secret, "GATEWAY_INSECURE_NO_AUTH=false")

	for name, args := range map[string][]string{
		"bad token": {"--token", "not-a-jwt"},
		"no token":  nil,
		"other key": {"--token", browserCookie(t, "another secret", 7)},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, errs := newLineWriter(), newLineWriter()
		err := run(ctx, append([]string{"tail", "--url", g.base}, args...), nil, out, errs)
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil || timedOut {
			t.Fatalf("%s: tail returned %v (timed out: %v), want a refusal before the timeout", name, err, timedOut)
		}
		want := "tail: the gateway at " + g.base + " refused the credentials (HTTP 401); pass a valid token with --token or GATEWAY_TOKEN"
		if err.Error() != want {
			t.Fatalf("%s: error %q, want %q", name, err, want)
		}
	}

	token := signHS256(t, secret, jwt.MapClaims{"user_id": 7, "exp": time.Now().Add(time.Hour).Unix()})
	tr := startTail(t, []string{"GATEWAY_TOKEN=" + token}, "--url", g.base)
	waitClients(t, g, 1)
	db.insertFact(t, 8, "2026-01-08")
	if l := tr.out.waitLines(t, 1, 20*time.Second)[0]; !strings.Contains(l, "amount=8") {
		t.Fatalf("line %q, want the fact", l)
	}
}

// A reset is printed as a line of its own and said on stderr; the tail then
// resumes from the head the reset carried.
func TestTailSaysReset(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	g := startGateway(t, db)
	db.insertFact(t, 1, "2026-01-09")
	waitFor(t, 10*time.Second, "the gateway to read the fact", func() bool {
		_, body, _ := getJSON(g.base + "/readyz")
		return body["head"] != "0-0"
	})
	tr := startTail(t, nil, "--url", g.base, "--from", "999999-1")
	l := tr.out.waitLines(t, 1, 20*time.Second)[0]
	if m := tailLine.FindStringSubmatch(l); m == nil || m[3] != "reset" || !strings.Contains(m[4], "reason=unknown") {
		t.Fatalf("first line %q, want a reset with reason unknown", l)
	}
	tr.errs.waitMatch(t, `^tail: reset \(unknown\): the gateway could not resume after event \d+-\d+; events in between are not shown$`, 10*time.Second)
	waitClients(t, g, 1)
	db.insertFact(t, 2, "2026-01-09")
	if l := tr.out.waitLines(t, 2, 20*time.Second)[1]; !strings.Contains(l, "amount=2") {
		t.Fatalf("after the reset: %q, want the new fact", l)
	}
}

// healthcheck exits 0 for a ready gateway and not otherwise: before the
// event log is installed /readyz is 503 (--live, /healthz, passes), and
// nothing listening fails.
func TestHealthcheck(t *testing.T) {
	t.Parallel()
	check := func(environ []string, args ...string) (string, error) {
		out := newLineWriter()
		err := run(t.Context(), append([]string{"healthcheck"}, args...), environ, out, newLineWriter())
		return out.String(), err
	}
	db := newTestDB(t)
	g := startGateway(t, db)
	if out, err := check(nil, "--url", g.base); err != nil || !strings.Contains(out, `"status":"ready"`) {
		t.Fatalf("ready gateway: %q, %v", out, err)
	}
	// The address comes from GATEWAY_ADDR, as in the image.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(g.base, "http://"))
	if _, err := check([]string{"GATEWAY_ADDR=:" + port}); err != nil {
		t.Fatalf("healthcheck with GATEWAY_ADDR=:%s: %v", port, err)
	}

	bare := startGatewayNoWait(t, newBareDB(t))
	waitFor(t, 10*time.Second, "the unmigrated gateway to answer", func() bool {
		code, _, _ := getJSON(bare.base + "/healthz")
		return code == http.StatusOK
	})
	if _, err := check(nil, "--url", bare.base); err == nil || !strings.Contains(err.Error(), "answered 503") {
		t.Fatalf("unmigrated gateway: %v, want a 503 failure", err)
	}
	if _, err := check(nil, "--url", bare.base, "--live"); err != nil {
		t.Fatalf("--live on a serving gateway: %v", err)
	}
	if _, err := check(nil, "--url", "http://"+pickAddr(t)); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("nothing listening: %v, want connection refused", err)
	}
}

// TestOpsBinary builds the binary once for the tests that run it as people
// and images do (a build is the costliest step of each).
func TestOpsBinary(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped in -short mode")
	}
	bin := buildGateway(t)
	t.Run("demo", func(t *testing.T) {
		t.Parallel()
		testDemoBinary(t, bin)
	})
	t.Run("compose", func(t *testing.T) {
		t.Parallel()
		testComposeStack(t, bin)
	})
}

// testDemoBinary: `gateway demo` as a newcomer runs it: the built binary, no DATABASE_URL,
// no settings. It prints loopback URLs that work (page, client.js, SSE,
// WebSocket, and the tail and healthcheck commands against it), events
// flow on their own, and Ctrl-C (SIGINT to its process group, as a
// terminal sends it) stops it with status 0, leaving no process, no
// PostgreSQL and no directory behind.
func testDemoBinary(t *testing.T, bin string) {
	out, stderr := newLineWriter(), newLineWriter()
	cmd := exec.Command(bin, "demo", "--every", "200ms")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "GATEWAY_LOG_FORMAT=text"}
	cmd.Stdout, cmd.Stderr = out, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start demo: %v", err)
	}
	pgid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // only if the test failed half-way
		if t.Failed() {
			t.Logf("demo stdout:\n%s\nstderr:\n%s", out.String(), stderr.String())
		}
	})

	data := out.waitMatch(t, `^PostgreSQL \d+ on 127\.0\.0\.1:(\d+), data in (\S+) \(removed on exit\)\.$`, 60*time.Second)
	pgPort, dataDir := data[1], data[2]
	base := out.waitMatch(t, `^  page +(http://127\.0\.0\.1:\d+)/$`, 60*time.Second)[1]
	sseURL := out.waitMatch(t, `^  SSE +curl -N (\S+)$`, time.Second)[1]
	wsURL := out.waitMatch(t, `^  WebSocket +(ws://\S+)$`, time.Second)[1]
	if sseURL != base+"/api/v1/budget/events" || wsURL != "ws"+strings.TrimPrefix(base, "http")+"/api/v1/budget/ws" {
		t.Fatalf("URLs %s, %s for page %s", sseURL, wsURL, base)
	}
	out.waitMatch(t, `^  tail +gateway tail --url `+regexp.QuoteMeta(base)+`$`, time.Second)
	out.waitMatch(t, `AUTHENTICATION IS OFF`, time.Second)

	// The page and the client library it loads.
	for path, want := range map[string]string{"/": `<script src="/api/v1/budget/client.js">`, "/api/v1/budget/client.js": "BudgetRealtime"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b := new(bytes.Buffer)
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(b.String(), want) {
			t.Fatalf("GET %s: %d, body without %q", path, resp.StatusCode, want)
		}
	}
	// Sample changes arrive on their own over SSE and the WebSocket.
	sse := openRawSSE(t, sseURL, nil)
	var f frame
	if err := json.Unmarshal([]byte(strings.TrimPrefix(sse.waitLine(t, "data: ", 10*time.Second), "data: ")), &f); err != nil ||
		!regexp.MustCompile(`^(budget_fact|article)_(created|updated|deleted)$`).MatchString(f.Type) {
		t.Fatalf("SSE event %+v (%v), want a sample change", f, err)
	}
	conn, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", wsURL, err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, want := range []string{`"type":"connected"`, `"type":"budget_fact_`} {
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				t.Fatalf("WebSocket: %v while waiting for %s", err, want)
			}
			if strings.Contains(string(msg), want) || (want == `"type":"budget_fact_` && strings.Contains(string(msg), `"type":"article_`)) {
				break
			}
		}
	}
	// The operator's commands, as the binary runs them.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	tailOut := newLineWriter()
	tail := exec.CommandContext(ctx, bin, "tail", "--json", "--url", base)
	tail.Stdout = tailOut
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	for _, l := range tailOut.waitLines(t, 2, 15*time.Second) {
		if err := json.Unmarshal([]byte(l), &f); err != nil || f.ID == "" {
			t.Fatalf("tail --json line %q: %v", l, err)
		}
	}
	_ = tail.Process.Kill()
	_ = tail.Wait()
	health := func() error {
		c := exec.Command(bin, "healthcheck")
		c.Env = []string{"GATEWAY_ADDR=" + strings.TrimPrefix(base, "http://")}
		return c.Run()
	}
	if err := health(); err != nil {
		t.Fatalf("gateway healthcheck against the demo: %v", err)
	}

	// Ctrl-C.
	if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("demo exited with %v after SIGINT, want status 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("demo still running 30s after SIGINT")
	}
	out.waitMatch(t, `^Removed the throwaway PostgreSQL cluster and `+regexp.QuoteMeta(dataDir)+`\.$`, time.Second)
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after the demo exited (%v)", dataDir, err)
	}
	// pg_ctl stop returns once postmaster.pid is gone, a moment before the
	// processes have exited.
	waitFor(t, 10*time.Second, "every process of the demo to exit", func() bool {
		return len(runningWithArg(dataDir)) == 0 && syscall.Kill(-pgid, 0) != nil
	})
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+pgPort, time.Second); err == nil {
		c.Close()
		t.Fatalf("something still listens on the demo's PostgreSQL port %s", pgPort)
	}
	if err := health(); err == nil {
		t.Fatalf("healthcheck passed after the demo exited")
	}
}

// With DATABASE_URL the demo uses that database: it creates the tables
// when they are absent, keeps them (and their rows) when it stops, and runs
// again on them.
func TestDemoWithDatabaseURL(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	for round := 1; round <= 2; round++ {
		out := newLineWriter()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, []string{"demo", "--every", "100ms"},
				[]string{"DATABASE_URL=" + dbURL, "GATEWAY_ADDR=127.0.0.1:0", "GATEWAY_LOG_LEVEL=warn"}, out, newLineWriter())
		}()
		base := out.waitMatch(t, `^  page +(http://127\.0\.0\.1:\d+)/$`, 60*time.Second)[1]
		sse := openRawSSE(t, base+"/api/v1/budget/events", nil)
		sse.waitLine(t, "data: ", 10*time.Second)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: demo returned %v", round, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: demo still running 20s after cancel", round)
		}
		if s := out.String(); strings.Contains(s, "throwaway") || !strings.Contains(s, "Gateway stopped.") {
			t.Fatalf("round %d output:\n%s", round, s)
		}
	}
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db := &testDB{url: dbURL, pool: pool}
	if n := db.queryInt(t, `SELECT count(*) FROM articles`); n != 5 {
		t.Fatalf("%d articles, want the 5 seeded once", n)
	}
	if n := db.queryInt(t, `SELECT count(*) FROM rtgw.event`); n < 2 {
		t.Fatalf("%d events in the log, want the sample changes of both rounds", n)
	}
}

// runningWithArg lists running processes whose command line mentions s.
func runningWithArg(s string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmd, []byte(s)) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); err == nil && i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue // exited, not yet reaped
		}
		out = append(out, pid)
	}
	return out
}

// The demo's page in headless Chromium: client.js connects over the
// WebSocket without a token (the demo has no authentication, so /ws/token
// answers 404) and the sample changes appear as rows.
func TestDemoPageInBrowser(t *testing.T) {
	requireBrowser(t)
	dbURL := pgtest.NewDatabase(t)
	out := newLineWriter()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--every", "100ms"},
			[]string{"DATABASE_URL=" + dbURL, "GATEWAY_ADDR=127.0.0.1:0", "GATEWAY_LOG_LEVEL=warn"}, out, newLineWriter())
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo returned %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("demo still running 20s after cancel")
		}
	})
	base := out.waitMatch(t, `^  page +(http://127\.0\.0\.1:\d+)/$`, 60*time.Second)[1]

	browser := startBrowser(t)
	pctx, pcancel := chromedp.NewContext(browser)
	t.Cleanup(pcancel)
	if err := chromedp.Do(pctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("open the demo page: %v", err)
	}
	_, err := chromedp.Run(pctx, chromedp.Poll[chromedp.Void](
		`document.getElementById('state').textContent === 'open' && document.getElementById('transport').textContent === 'over ws' &&
		 document.querySelectorAll('#events tr').length >= 3`,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil {
		html, _ := chromedp.Run(pctx, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("the demo page shows no events over the WebSocket: %v\n%s", err, html)
	}
}
