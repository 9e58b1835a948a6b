// Package gateway is the socket side: the hub that fans events out and keeps
// the replay window, and the transports that carry them (WebSocket, SSE).
package gateway

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// Options are the gateway's tunables (see config.Config for their meaning).
type Options struct {
	Auth            *Auth         // nil or no secret: open
	MintWSToken     bool          // serve POST /ws/token from the cookie
	Window          int           // events kept in memory for replay
	SendQueue       int           // frames queued per connection
	WriteTimeout    time.Duration // deadline of one socket write
	Heartbeat       time.Duration // SSE heartbeat interval
	PingInterval    time.Duration // WebSocket {"type":"ping"} interval
	MaxConnsPerUser int           // WebSocket connections per user; 0: no limit
	MaxConns        int           // WebSocket connections in total; 0: no limit
	AllowedOrigins  []string      // origins allowed to open WebSockets; empty: same host only
	Visibility      []Rule        // per-table visibility rules; none: everyone sees everything

	MaxMessageBytes  int64          // largest client message; over it, 1009
	MessageRate      float64        // client messages per second on average; 0: no limit
	MessageBurst     int            // client messages at once
	MaxConnsPerAddr  int            // WebSockets + SSE streams + long-polls per client address; 0: no limit
	TrustedProxies   []netip.Prefix // peers whose X-Forwarded-For / X-Real-IP name the client
	MaxSSEClients    int            // SSE streams at once; 0: no limit
	MaxPollers       int            // long-polls in progress at once; 0: no limit
	MaxTypes         int            // names in an SSE ?types=; 0: no limit
	MaxTypesBytes    int            // bytes of an SSE ?types=; 0: no limit
	HeaderTimeout    time.Duration  // to read a request's headers (and the one body the gateway reads)
	HandshakeTimeout time.Duration  // to write the WebSocket upgrade answer
	IdleTimeout      time.Duration  // keep-alive connections between requests
	MaxHeaderBytes   int            // request line and headers
	SendBuffer       int            // SO_SNDBUF of client sockets; 0: the OS's
	Compression      bool           // offer permessage-deflate; each event compressed once
	NoIOURing        bool           // write each socket with its own write(2), even where io_uring is allowed

	OpsToken     string  // token for /ops; empty: the app's access token, or open without auth
	MetricsRoute bool    // serve /metrics on Handler (else the caller serves MetricsHandler elsewhere, or not at all)
	Sources      Sources // what metrics and /ops read from the LISTEN side
}

// Server owns the hub and the HTTP routes.
type Server struct {
	hub   *Hub
	opt   Options
	ws    *wsTransport
	sse   *sseTransport
	poll  *pollTransport
	done  chan struct{}
	ready func() error
	log   *slog.Logger

	metrics *metrics // see metrics.go
	ops     *opsState
}

// New builds a server. ready reports why the event source is not ready (nil
// when it is); /readyz answers with it.
func New(logger *slog.Logger, logs Log, ready func() error, opt Options) *Server {
	if opt.Auth == nil {
		opt.Auth = &Auth{}
	}
	hub := NewHub(logger, logs, opt.Window, opt.Visibility)
	s := &Server{hub: hub, opt: opt, done: make(chan struct{}), ready: ready, log: logger}
	// One count per client address across the three transports: the limit
	// is on what an address holds open, whichever way.
	addrs := newAddrSlots(opt.MaxConnsPerAddr)
	clients := clientAddrs{trusted: opt.TrustedProxies}
	s.ws = newWS(hub, logger, opt, addrs)
	s.sse = &sseTransport{hub: hub, auth: opt.Auth, log: logger, queue: opt.SendQueue, heartbeat: opt.Heartbeat,
		writeTimeout: opt.WriteTimeout, done: s.done, streams: slots{max: int64(opt.MaxSSEClients)},
		addrs: addrs, clients: clients, maxTypes: opt.MaxTypes, maxTypesLen: opt.MaxTypesBytes}
	s.poll = &pollTransport{hub: hub, auth: opt.Auth, log: logger, done: s.done, writeTimeout: opt.WriteTimeout,
		polls: slots{max: int64(opt.MaxPollers)}, addrs: addrs, clients: clients}
	s.ws.bodyTimeout = opt.HeaderTimeout
	s.metrics = newMetrics(s, opt.Sources)
	hub.metrics, s.ws.metrics, s.sse.metrics, s.poll.metrics = s.metrics, s.metrics, s.metrics, s.metrics
	s.ops = newOpsState()
	return s
}

// HTTPServer returns an http.Server for Handler with the gateway's
// connection limits. It has no ReadTimeout or WriteTimeout: streams live
// for hours, every write has its own deadline, and the one request body
// the gateway reads (/ws/disconnect) has its own read deadline.
func (s *Server) HTTPServer() *http.Server {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.opt.HeaderTimeout, // slowloris: headers trickled in forever
		IdleTimeout:       s.opt.IdleTimeout,
		MaxHeaderBytes:    s.opt.MaxHeaderBytes,
		// Garbage requests and broken connections are the clients' business,
		// not worth more than a debug line.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if n := s.opt.SendBuffer; n > 0 {
		srv.ConnState = func(c net.Conn, st http.ConnState) {
			if tc, ok := c.(*net.TCPConn); ok && st == http.StateNew {
				_ = tc.SetWriteBuffer(n)
			}
		}
	}
	return srv
}

// Run runs the server's timers (the WebSocket ping) until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	go s.sampleOps(ctx) // the ops page's history; see ops.go
	if s.opt.PingInterval > 0 {
		s.ws.pinger(ctx, s.opt.PingInterval)
	}
	<-ctx.Done()
	return nil
}

// Hub returns the server's hub, which the event source publishes to.
func (s *Server) Hub() *Hub { return s.hub }

// Handler returns every route of the gateway.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/budget/ws", s.ws)
	mux.HandleFunc("GET /api/v1/budget/ws/status", s.ws.status)
	mux.HandleFunc("POST /api/v1/budget/ws/disconnect", s.ws.disconnectConn)
	if s.opt.MintWSToken {
		mux.HandleFunc("POST /api/v1/budget/ws/token", s.mint)
	}
	mux.Handle("GET /api/v1/budget/poll", s.poll)
	mux.Handle("GET /api/v1/budget/events", s.sse)
	mux.HandleFunc("GET /api/v1/budget/client.js", serveClientJS)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	s.opsRoutes(mux) // /ops, /ops/stats, /ops/events and /metrics; see ops.go
	return mux
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	head, err := s.hub.Head()
	if err == nil && s.ready != nil {
		err = s.ready()
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "head": head.String(), "clients": s.hub.Len(),
		"streams": s.sse.streams.len(), "polls": s.poll.polls.len()})
}

// Close disconnects every client (WebSockets with 1001, SSE streams end) and
// refuses new ones. Call it before http.Server.Shutdown, which does not wait
// for hijacked connections and would wait forever for open streams.
func (s *Server) Close(ctx context.Context) {
	s.metrics.closing.Store(true)
	close(s.done)
	s.hub.Close(ctx)
	s.ws.closeAll() // connections not yet attached
}

// mint answers POST /ws/token as the backend does: a 5-minute WebSocket
// token for the user of the access cookie.
func (s *Server) mint(w http.ResponseWriter, r *http.Request) {
	u, err := s.opt.Auth.Request(r)
	if err != nil || s.opt.Auth.Open() {
		unauthorized(w)
		return
	}
	token, err := s.opt.Auth.MintWS(u, 5*time.Minute)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"detail": "could not sign a token"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": token})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
