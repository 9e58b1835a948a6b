package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// readPause is -read-pause, for the epoll readers of every run in the
// process.
var readPause atomic.Int64

// readURing is -read-io-uring: the epoll readers (Linux) read the sockets
// each round found ready through an io_uring. It turns itself off where
// the kernel refuses. ringReads counts their calls through it. Off by
// default: the tool then spends more, but the gateway's figures stay
// comparable with every run before it (see the README, Load tool).
var (
	readURing atomic.Bool
	ringReads atomic.Int64
)

// wsTransport dials /api/v1/budget/ws.
type wsTransport struct {
	addr   string // host:port to dial
	host   string // the Host header
	path   string // /api/v1/budget/ws
	tls    *tls.Config
	token  string
	batch  bool
	dialer *net.Dialer
}

func newWSTransport(base, token string, batch bool, src *net.TCPAddr) (*wsTransport, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("parse -url: %w", err)
	}
	t := &wsTransport{host: u.Host, path: "/api/v1/budget/ws", token: token, batch: batch, dialer: dialer(src)}
	port := u.Port()
	switch u.Scheme {
	case "https", "wss":
		t.tls = &tls.Config{ServerName: u.Hostname()}
		if port == "" {
			port = "443"
		}
	case "http", "ws":
		if port == "" {
			port = "80"
		}
	default:
		return nil, fmt.Errorf("-url %q: want http:// or https://", base)
	}
	t.addr = net.JoinHostPort(u.Hostname(), port)
	return t, nil
}

func (t *wsTransport) open(ctx context.Context, lastID string) (stream, error) {
	q := url.Values{}
	if t.token != "" {
		q.Set("token", t.token)
	}
	if lastID != "" {
		q.Set("last_event_id", lastID)
	}
	if t.batch {
		q.Set("batch", "1")
	}
	target := t.path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	conn, err := t.dialer.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, fmt.Errorf("dial websocket: %w", err)
	}
	if t.tls != nil {
		conn = tls.Client(conn, t.tls)
	}
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	rest, err := handshake(conn, t.host, target)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return newWSStream(conn, rest)
}

// handshake asks for the upgrade in one write and reads the answer; rest
// is what the gateway sent after it (its connected frame comes in the same
// segment as the 101).
func handshake(conn net.Conn, host, target string) (rest []byte, err error) {
	var kb [16]byte
	_, _ = rand.Read(kb[:])
	key := base64.StdEncoding.EncodeToString(kb[:])
	req := "GET " + target + " HTTP/1.1\r\nHost: " + host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, fmt.Errorf("send websocket handshake: %w", err)
	}
	buf := make([]byte, 0, 1024)
	end := -1
	for end < 0 {
		if len(buf) == cap(buf) {
			if cap(buf) >= 64<<10 {
				return nil, fmt.Errorf("websocket handshake: an answer header over %d bytes", cap(buf))
			}
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if end = bytes.Index(buf, []byte("\r\n\r\n")); end < 0 && err != nil {
			return nil, fmt.Errorf("read websocket handshake answer: %w", err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(buf[:end+4]), 512), nil)
	if err != nil {
		return nil, fmt.Errorf("read websocket handshake answer: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, statusError(resp)
	}
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), acceptKey(key); got != want {
		return nil, fmt.Errorf("websocket handshake: Sec-WebSocket-Accept %q, want %q", got, want)
	}
	return buf[end+4:], nil
}

// acceptKey is what the server must answer to key (RFC 6455, 4.2.2).
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// statusError says why an HTTP answer is not a stream; limits and
// authentication are errRefused.
func statusError(resp *http.Response) error {
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests:
		return fmt.Errorf("%w: %s", errRefused, resp.Status)
	}
	return fmt.Errorf("gateway answered %s", resp.Status)
}

// newWSStream reads conn: with the epoll readers where the platform has
// them (no goroutine woken per delivery, no read that only finds the
// socket empty), else with a goroutine of its own.
func newWSStream(conn net.Conn, rest []byte) (stream, error) {
	if tc, ok := conn.(*net.TCPConn); ok && pollAvailable {
		return newPollStream(tc, rest)
	}
	return newConnStream(conn, rest), nil
}

// connStream reads a connection from the goroutine that calls read.
type connStream struct {
	conn net.Conn
	rest []byte
	p    wsParser
}

func newConnStream(conn net.Conn, rest []byte) *connStream {
	s := &connStream{conn: conn, rest: rest}
	s.p.ping = func(payload []byte) { _, _ = conn.Write(pongFrame(payload)) }
	return s
}

func (s *connStream) read(fn func([]byte)) error {
	s.p.msg = fn
	if err := s.p.feed(s.rest); err != nil {
		return err
	}
	s.rest = nil
	buf := make([]byte, 4096)
	for {
		n, err := s.conn.Read(buf)
		if n > 0 {
			if err := s.p.feed(buf[:n]); err != nil {
				return err
			}
		}
		if err != nil {
			return err
		}
	}
}

func (s *connStream) close() {
	s.p.shut.Store(true)
	_ = s.conn.Close()
}
