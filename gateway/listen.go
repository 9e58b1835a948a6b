package gateway

import (
	"context"
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
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, "tcp", addr)
}
