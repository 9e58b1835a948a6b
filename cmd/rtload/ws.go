package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"
)

// wsTransport dials /api/v1/budget/ws.
type wsTransport struct {
	url    string // ws://host/api/v1/budget/ws, without a query
	token  string
	batch  bool
	dialer *websocket.Dialer
}

func newWSTransport(base, token string, batch bool, src *net.TCPAddr) *wsTransport {
	nd := dialer(src)
	return &wsTransport{
		url: wsURL(base), token: token, batch: batch,
		dialer: &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: 10 * time.Second,
			// Small buffers: thousands of clients share the machine with the
			// gateway. Frames larger than the read buffer still arrive whole.
			ReadBufferSize:  4096,
			WriteBufferSize: 512,
		},
	}
}

// wsURL turns http(s)://host into ws(s)://host/api/v1/budget/ws.
func wsURL(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	u.Scheme = map[string]string{"https": "wss", "wss": "wss"}[u.Scheme]
	if u.Scheme == "" {
		u.Scheme = "ws"
	}
	u.Path = "/api/v1/budget/ws"
	return u.String()
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
	u := t.url
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	conn, resp, err := t.dialer.DialContext(ctx, u, nil)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
			return nil, statusError(resp)
		}
		return nil, fmt.Errorf("dial websocket: %w", err)
	}
	conn.SetReadLimit(64 << 20)
	return &wsStream{conn: conn, buf: make([]byte, 0, 4096)}, nil
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

type wsStream struct {
	conn *websocket.Conn
	buf  []byte // reused for every message: no allocation per delivery
}

func (s *wsStream) read(fn func([]byte)) error {
	for {
		_, r, err := s.conn.NextReader()
		if err != nil {
			return err
		}
		s.buf = s.buf[:0]
		for {
			if len(s.buf) == cap(s.buf) {
				s.buf = append(s.buf, 0)[:len(s.buf)]
			}
			n, err := r.Read(s.buf[len(s.buf):cap(s.buf)])
			s.buf = s.buf[:len(s.buf)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		fn(s.buf)
	}
}

func (s *wsStream) close() { _ = s.conn.Close() }
