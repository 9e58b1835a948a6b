package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/budget-rt/gateway/config"
)

// WebSocket upgrades from pages of other sites are refused with 403.
func TestOriginAllowlist(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	dial := func(g *gw, origin string) int {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		conn, resp, err := websocket.DefaultDialer.Dial(g.wsURL(""), h)
		if err == nil {
			conn.Close()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial with origin %q: %v", origin, err)
		}
		return resp.StatusCode
	}
	same := startGateway(t, db)
	for origin, want := range map[string]int{
		"":                           http.StatusSwitchingProtocols, // not a browser
		same.base:                    http.StatusSwitchingProtocols, // the page's own host
		"http://evil.example":        http.StatusForbidden,
		"https://budget.example.com": http.StatusForbidden,
	} {
		if got := dial(same, origin); got != want {
			t.Errorf("default: origin %q got %d, want %d", origin, got, want)
		}
	}
	listed := startGateway(t, db, "GATEWAY_ALLOWED_ORIGINS=https://budget.example.com, https://m.budget.example.com")
	for origin, want := range map[string]int{
		"":                             http.StatusSwitchingProtocols,
		"https://budget.example.com":   http.StatusSwitchingProtocols,
		"https://m.budget.example.com": http.StatusSwitchingProtocols,
		listed.base:                    http.StatusForbidden, // not listed
		"http://budget.example.com":    http.StatusForbidden, // other scheme
		"https://evil.example":         http.StatusForbidden,
	} {
		if got := dial(listed, origin); got != want {
			t.Errorf("allowlist: origin %q got %d, want %d", origin, got, want)
		}
	}
}

// syncBuffer is a log sink safe for the gateway's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The WebSocket token travels in the query string; it never reaches the
// gateway's logs, refused or accepted, at any level.
func TestTokensNeverLogged(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	cfg, err := config.Load(db.environ(protoAuthOn()...))
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gw{base: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() {
		g.done <- serve(ctx, cfg, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ln)
	}()
	t.Cleanup(func() { g.stop(t) })
	g.waitReady(t)

	good := protoWSToken(t, 7)
	old := protoWSClaims(7)
	old["exp"] = time.Now().Add(-time.Minute).Unix()
	expired := protoSign(t, jwt.SigningMethodHS256, []byte(protoSecret), old)
	forged := protoSign(t, jwt.SigningMethodHS256, []byte("other-secret"), protoWSClaims(7))
	for _, tok := range []string{good, expired, forged, "not-a-jwt-but-secret-looking"} {
		conn, _, err := websocket.DefaultDialer.Dial(g.wsURL("token="+tok), nil)
		if err == nil {
			conn.Close()
		}
	}
	db.insertFact(t, 1, "2026-01-13")
	g.stop(t)
	out := logs.String()
	if !strings.Contains(out, "websocket refused") {
		t.Fatalf("expected refusals in the log, got:\n%s", out)
	}
	for _, tok := range []string{good, expired, forged, "not-a-jwt-but-secret-looking"} {
		for _, part := range strings.Split(tok, ".") {
			if len(part) > 8 && strings.Contains(out, part) {
				t.Fatalf("a token part %q is in the log:\n%s", part, out)
			}
		}
	}
}
