package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	sse "github.com/tmaxmax/go-sse"
	"golang.org/x/term"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
)

// errRefused: the gateway refused the credentials; retrying cannot help.
var errRefused = errors.New("refused")

// tailer follows the gateway's SSE stream and prints one line per event,
// reconnecting on its own and resuming after the last event it printed.
type tailer struct {
	url    string // the gateway's base URL
	token  string // Bearer token, or ""
	types  string // ?types= filter
	json   bool
	color  bool
	idle   time.Duration // no byte for this long (heartbeats included): reconnect
	out    io.Writer
	status io.Writer // connection news, kept off out so --json stays clean
	client *http.Client

	last string // id of the last event printed (or of a reset's head)
}

// tail is `gateway tail`.
func tail(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("url", defaultURL(environ), "the gateway's base URL (default from GATEWAY_ADDR)")
	asJSON := fs.Bool("json", false, "print each event's JSON object on a line of its own, for piping")
	types := fs.String("types", "", "only these event types, comma-separated")
	from := fs.String("from", "", "start after this event id instead of at the newest event")
	token := fs.String("token", lookupEnv(environ, "GATEWAY_TOKEN"), "Bearer token (default GATEWAY_TOKEN)")
	color := fs.String("color", "auto", "auto (when stdout is a terminal and NO_COLOR is unset), always or never")
	idle := fs.Duration("idle", 45*time.Second, "reconnect after this long without a byte from the gateway (it sends a heartbeat every GATEWAY_SSE_HEARTBEAT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("tail: unexpected argument %q", fs.Arg(0))
	}
	t := &tailer{url: strings.TrimRight(*base, "/"), token: *token, types: *types, json: *asJSON,
		idle: *idle, out: stdout, status: stderr, client: &http.Client{}, last: *from}
	switch *color {
	case "always":
		t.color = true
	case "never":
	case "auto":
		t.color = isTerminal(stdout) && lookupEnv(environ, "NO_COLOR") == ""
	default:
		return fmt.Errorf("tail: --color must be auto, always or never, got %q", *color)
	}
	if u, err := url.Parse(t.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("tail: --url %q is not an http(s) URL such as http://127.0.0.1:8080", t.url)
	}
	return t.run(ctx)
}

// run follows the stream until ctx ends or the gateway refuses the
// credentials.
func (t *tailer) run(ctx context.Context) error {
	if t.last == "" {
		// Start at the newest event, so that even a reconnect before the
		// first event loses nothing. Without /readyz (a proxy may not route
		// it) the stream starts "now".
		t.last = t.head(ctx)
	}
	const maxDelay = 5 * time.Second
	delay, down, connected := 250*time.Millisecond, false, false
	for {
		opened, err := t.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errRefused) {
			return fmt.Errorf("tail: the gateway at %s %w; pass a valid token with --token or GATEWAY_TOKEN", t.url, err)
		}
		switch {
		case opened:
			delay, down, connected = 250*time.Millisecond, false, true
			fmt.Fprintf(t.status, "tail: stream ended (%v); reconnecting%s\n", errOr(err, "closed by the gateway"), t.after())
		case !down:
			down = true
			what := "is down"
			if !connected {
				what = "is not reachable"
			}
			fmt.Fprintf(t.status, "tail: the gateway at %s %s (%v); retrying until it is back%s\n", t.url, what, err, t.after())
		}
		// Jitter: many tails do not hit a restarted gateway in step.
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		delay = min(2*delay, maxDelay)
	}
}

func (t *tailer) after() string {
	if t.last == "" {
		return ""
	}
	return " after event " + t.last
}

func errOr(err error, s string) string {
	if err == nil {
		return s
	}
	return err.Error()
}

// head asks /readyz for the newest event's id; "" when it cannot.
func (t *tailer) head(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url+"/readyz", nil)
	if err != nil {
		return ""
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var body struct {
		Head string `json:"head"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
		return ""
	}
	if _, err := notify.ParsePosition(body.Head); err != nil {
		return "" // "0-0": the log is empty, and "now" is its start
	}
	return body.Head
}

// stream reads one connection until it ends. opened tells whether the
// gateway accepted it.
func (t *tailer) stream(ctx context.Context) (opened bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	u := t.url + "/api/v1/budget/events"
	if t.types != "" {
		u += "?types=" + url.QueryEscape(t.types)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if t.last != "" {
		req.Header.Set("Last-Event-ID", t.last)
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return false, op // "dial tcp 127.0.0.1:8080: connect: connection refused"
		}
		return false, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return false, fmt.Errorf("%w the credentials (HTTP %d)", errRefused, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return false, fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	case !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"):
		return false, fmt.Errorf("%s is not an event stream (Content-Type %q)", u, resp.Header.Get("Content-Type"))
	}

	body := newIdleReader(resp.Body, t.idle, func() { cancel(fmt.Errorf("no byte for %s", t.idle)) })
	defer body.stop()
	for ev, err := range sse.Read(body, &sse.ReadConfig{MaxEventSize: 64 << 20}) {
		if err != nil {
			return true, errors.Join(context.Cause(ctx), err)
		}
		if err := t.print(ev); err != nil {
			return true, err
		}
	}
	// The parser ends at EOF: the gateway closed the stream (shutdown).
	return true, context.Cause(ctx)
}

// tailFrame is an event (or reset) as the gateway encodes it.
type tailFrame struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
	Truncated bool            `json:"truncated"`
	Timestamp string          `json:"timestamp"`
}

// print writes one event. An event whose data is not a whole JSON object
// was cut short: it is not printed and its id not taken, so the reconnect
// asks for it again.
func (t *tailer) print(ev sse.Event) error {
	var f tailFrame
	if err := json.Unmarshal([]byte(ev.Data), &f); err != nil {
		return fmt.Errorf("event %q: bad data: %w", ev.LastEventID, err)
	}
	if t.json {
		if _, err := fmt.Fprintf(t.out, "%s\n", ev.Data); err != nil {
			return err
		}
	} else if _, err := io.WriteString(t.out, t.line(ev.Type, f)); err != nil {
		return err
	}
	if f.ID != "" || ev.Type == "reset" {
		t.last = f.ID // a reset carries the head's id, "" for an empty log
	}
	if ev.Type == "reset" {
		var d struct{ Reason string }
		_ = json.Unmarshal(f.Data, &d)
		fmt.Fprintf(t.status, "tail: reset (%s): the gateway could not resume%s; events in between are not shown\n", d.Reason, t.after())
	}
	return nil
}

const (
	ansiReset  = "\x1b[0m"
	ansiDim    = "\x1b[2m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
)

// line formats an event as "15:04:05.000  id  type  key=value ...".
func (t *tailer) line(event string, f tailFrame) string {
	typ := f.Type
	if typ == "" {
		typ = event
	}
	ts := f.Timestamp
	if tm, err := time.Parse(time.RFC3339Nano, f.Timestamp); err == nil {
		ts = tm.Local().Format("15:04:05.000")
	}
	summary := summarize(f.Data, 200)
	if typ == "reset" {
		summary = "the gateway could not resume; refetch what you need (" + summary + ")"
	}
	if f.Truncated {
		summary += " (truncated: the row was too large)"
	}
	paint := func(code, s string) string {
		if !t.color {
			return s
		}
		return code + s + ansiReset
	}
	color := ""
	switch {
	case typ == "reset":
		color = ansiBold + ansiYellow
	case strings.HasSuffix(typ, "_created"):
		color = ansiGreen
	case strings.HasSuffix(typ, "_updated"):
		color = ansiCyan
	case strings.HasSuffix(typ, "_deleted"):
		color = ansiRed
	}
	typCol := fmt.Sprintf("%-24s", typ)
	if color != "" {
		typCol = paint(color, typCol)
	}
	return fmt.Sprintf("%s  %s  %s  %s\n", paint(ansiDim, ts), paint(ansiDim, fmt.Sprintf("%-10s", f.ID)), typCol, summary)
}

// summarize renders a JSON object as key=value pairs in its own order,
// without nulls, cut at max bytes.
func summarize(data json.RawMessage, max int) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return string(data)
	}
	var b strings.Builder
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			break
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			break
		}
		if string(v) == "null" {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil && s != "" && !strings.ContainsAny(s, " \t\"=") {
			v = json.RawMessage(s) // a plain word needs no quotes
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%v=%s", kt, v)
		if b.Len() > max {
			break
		}
	}
	s := b.String()
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// idleReader cancels the stream when no byte arrives for d: a cut network
// leaves a socket that never errors, and the gateway's heartbeats keep a
// healthy one busy.
type idleReader struct {
	r     io.Reader
	timer *time.Timer
	d     time.Duration
	once  sync.Once
}

func newIdleReader(r io.Reader, d time.Duration, onIdle func()) *idleReader {
	return &idleReader{r: r, d: d, timer: time.AfterFunc(d, onIdle)}
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.timer.Reset(r.d)
	}
	return n, err
}

func (r *idleReader) stop() { r.once.Do(func() { r.timer.Stop() }) }

// isTerminal reports whether w is a terminal (colour is for people, not
// for pipes and files).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// lookupEnv returns the last value of key in environ, "" when unset.
func lookupEnv(environ []string, key string) string {
	v := ""
	for _, kv := range environ {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// defaultURL is the gateway of this machine, at GATEWAY_ADDR (or its
// default): what `gateway tail` and `gateway healthcheck` talk to.
func defaultURL(environ []string) string {
	addr := lookupEnv(environ, "GATEWAY_ADDR")
	if addr == "" {
		for _, s := range config.Settings() {
			if s.Var == "GATEWAY_ADDR" {
				addr = s.Default
			}
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port)
}
