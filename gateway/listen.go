package gateway

import (
	"context"
	"errors"
	"net"
)

// Listen opens the TCP listener the gateway serves on. Accepted sockets get
// no TCP keepalive: Go turns it on by default, at four setsockopt calls per
// connection (about 4% of a WebSocket handshake here, most of it in a
// reconnect storm), and it would find nothing the gateway does not already
// find. A WebSocket is pinged and closed when its pongs stop, SSE streams
// and long-polls write at least every heartbeat and are bounded, and an idle
// keep-alive connection is closed after GATEWAY_IDLE_TIMEOUT. (Keepalive
// probes only run on a connection with nothing unacknowledged, which the
// gateway's connections rarely are for long.)
//
// With reusePort the socket is opened with SO_REUSEPORT (Linux only), so
// that another gateway can listen on the same address at the same time: a
// restart starts the new process before the old one stops, and the
// kernel hands each new connection to one of the listeners.
func Listen(ctx context.Context, addr string, reusePort bool) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	if reusePort {
		if reusePortControl == nil {
			return nil, errors.New("GATEWAY_REUSE_PORT needs Linux")
		}
		lc.Control = reusePortControl
	}
	return lc.Listen(ctx, "tcp", addr)
}
