// Package gateway is the socket side: the hub that fans events out and keeps
// the replay window, and the transports that carry them (WebSocket, SSE).
package gateway

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
)

// Options are the gateway's tunables (see config.Config for their meaning).
type Options struct {
	Window       int           // events kept in memory for replay
	SendQueue    int           // messages queued per connection
	WriteTimeout time.Duration // deadline of one socket write
	Heartbeat    time.Duration // SSE heartbeat interval
}

// Server owns the hub and the HTTP routes.
type Server struct {
	hub   *Hub
	ws    *wsTransport
	sse   *sseTransport
	done  chan struct{}
	ready func() error
	log   *slog.Logger
}

// New builds a server. ready reports why the event source is not ready (nil
// when it is); /readyz answers with it.
func New(logger *slog.Logger, logs Log, ready func() error, opt Options) *Server {
	hub := NewHub(logger, logs, opt.Window)
	s := &Server{hub: hub, done: make(chan struct{}), ready: ready, log: logger}
	s.ws = newWS(hub, logger, opt)
	s.sse = &sseTransport{hub: hub, log: logger, queue: opt.SendQueue, heartbeat: opt.Heartbeat,
		writeTimeout: opt.WriteTimeout, done: s.done}
	return s
}

// Hub returns the server's hub, which the event source publishes to.
func (s *Server) Hub() *Hub { return s.hub }

// Handler returns every route of the gateway.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/budget/ws", s.ws)
	mux.Handle("GET /api/v1/budget/events", s.sse)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
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
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "head": head.String(), "clients": s.hub.Len()})
}

// Close disconnects every client (WebSockets with 1001, SSE streams end) and
// refuses new ones. Call it before http.Server.Shutdown, which does not wait
// for hijacked connections and would wait forever for open streams.
func (s *Server) Close(ctx context.Context) {
	close(s.done)
	s.hub.Close(ctx)
	_ = s.ws.m.CloseWithMsg(closeMessage(CloseGoingAway, "server shutting down")) // sessions not yet attached
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
