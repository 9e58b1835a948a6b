package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// errRefused is a refusal by a limit or by authentication (403, 429,
// 401): the run reports it instead of hammering the gateway.
var errRefused = errors.New("refused")

// stream is one open connection of a transport: it calls fn for every
// frame (a WebSocket message, an SSE data payload) until the connection
// ends, and returns why it ended.
type stream interface {
	read(fn func(frame []byte)) error
	close()
}

// transport opens a stream that resumes after lastID ("" for now).
type transport interface {
	open(ctx context.Context, lastID string) (stream, error)
}

// client is one simulated browser: it holds a connection open, counts
// what arrives, and when the connection ends reconnects with its last id
// after a jittered backoff, as a page does (client.js waits longer: see
// sleep).
type client struct {
	tally
	index   int // in the order of -ws then -sse: what reports name
	tr      transport
	clock   clock
	scan    *scanner
	prog    *progress
	backoff time.Duration // longest wait between two attempts
}

// connect opens the first connection, retrying while the gateway is not
// ready (503, or nothing listening) until ctx ends; a refusal is final.
func (c *client) connect(ctx context.Context, from string) (stream, error) {
	c.lastLen = copy(c.lastID[:], from)
	start := time.Now()
	for attempt := 0; ; attempt++ {
		s, err := c.tr.open(ctx, from)
		if err == nil {
			c.connectTime = int32(time.Since(start)/time.Microsecond) + 1
			return s, nil
		}
		if errors.Is(err, errRefused) {
			return nil, err
		}
		if !c.sleep(ctx, attempt) {
			return nil, fmt.Errorf("connect: %w", err)
		}
	}
}

// follow reads s and every later connection until ctx ends.
func (c *client) follow(ctx context.Context, s stream) {
	for {
		stop := context.AfterFunc(ctx, s.close)
		_ = s.read(func(frame []byte) {
			t := c.clock.now()
			c.scan.each(frame, func(ev event) { c.record(ev, t, c.prog) })
		})
		stop()
		s.close()
		if ctx.Err() != nil {
			return
		}
		c.lastDown = c.clock.now()
		for attempt := 0; ; attempt++ {
			if !c.sleep(ctx, attempt) {
				return
			}
			var err error
			if s, err = c.tr.open(ctx, c.last()); err == nil {
				break
			}
		}
		c.reconnects++
		c.lastUp = c.clock.now()
	}
}

// sleep waits before attempt: full jitter over an exponential backoff
// from 50 ms up to c.backoff, so that thousands of clients cut at once
// by a restart do not come back in one wave. It is harsher than
// client.js (250-500 ms, doubling up to 30 s): a storm measured with it
// has its clients back sooner, and trying more often meanwhile. It reports false when ctx
// ended first.
func (c *client) sleep(ctx context.Context, attempt int) bool {
	ceiling := min(c.backoff, 50*time.Millisecond<<min(attempt, 10))
	d := rand.N(ceiling) + time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// sources spreads clients over loopback addresses 127.0.0.2.. so that the
// gateway's per-address limit and one address's ephemeral ports do not
// bound a run. n = 0: let the kernel pick.
func sources(n int) []*net.TCPAddr {
	out := make([]*net.TCPAddr, n)
	for i := range out {
		out[i] = &net.TCPAddr{IP: net.IPv4(127, byte((i+2)>>16), byte((i+2)>>8), byte(i+2))}
	}
	return out
}

// dialer binds to one source address.
func dialer(src *net.TCPAddr) *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	if src != nil {
		d.LocalAddr = src
	}
	return d
}

// mintToken signs a 'ws' token for user id as the backend does
// (GATEWAY_JWT_SECRET): each client its own user, so the per-user limit
// does not apply across clients.
func mintToken(secret string, user int, ttl time.Duration) (string, error) {
	now := time.Now()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": strconv.Itoa(user), "type": "ws", "iat": now.Unix(), "exp": now.Add(ttl).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}
