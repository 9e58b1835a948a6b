package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/budget-rt/gateway/config"
)

// openPTY opens a pseudo-terminal and returns its terminal side, the file a
// program started in a terminal writes its stderr to.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	ptm, pts, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { pts.Close(); ptm.Close() })
	go func() { _, _ = bufio.NewReader(ptm).WriteTo(&bytes.Buffer{}) }() // drain, so writes never block
	return pts
}

// GATEWAY_LOG_FORMAT=auto logs JSON (log/slog's JSONHandler) to anything but
// a terminal, and text to a terminal; json and text force either.
func TestLogFormat(t *testing.T) {
	t.Parallel()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	tty := openPTY(t)
	var buf bytes.Buffer
	for _, c := range []struct {
		format, dest string
		w            interface{ Write([]byte) (int, error) }
		json         bool
	}{
		{"auto", "a pipe", pw, true},
		{"auto", "a buffer", &buf, true},
		{"auto", "a terminal", tty, false},
		{"json", "a terminal", tty, true},
		{"text", "a pipe", pw, false},
	} {
		cfg, err := config.Load([]string{"DATABASE_URL=postgres://x/y", "GATEWAY_LOG_FORMAT=" + c.format})
		if err != nil {
			t.Fatal(err)
		}
		h := newLogger(cfg, c.w).Handler()
		isJSON := fmt.Sprintf("%T", h) == "*slog.JSONHandler"
		if isJSON != c.json {
			t.Errorf("GATEWAY_LOG_FORMAT=%s writing to %s: handler %T, want JSON %v", c.format, c.dest, h, c.json)
		}
	}
}

// The real serve, with its stderr on a pipe as under Docker or systemd,
// writes one JSON object per line.
func TestServeLogsJSONToAPipe(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	env := append(db.environ(), "GATEWAY_LOG_FORMAT=auto", "GATEWAY_LOG_LEVEL=info")
	go func() { done <- run(ctx, []string{"serve"}, env, &bytes.Buffer{}, pw) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop")
		}
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	_ = pr.SetReadDeadline(time.Now().Add(20 * time.Second))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		if rec["time"] == nil || rec["level"] == nil || rec["msg"] == nil {
			t.Fatalf("log line %q lacks time, level or msg", sc.Text())
		}
		if rec["msg"] == "serving" {
			if addr, _ := rec["addr"].(string); !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Fatalf("serving line %q: addr %v", sc.Text(), rec["addr"])
			}
			return
		}
	}
	t.Fatalf("no serving line: %v", sc.Err())
}
