package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/gateway"
	"github.com/budget-rt/gateway/notify"
)

// serve runs the gateway until ctx ends. It listens on cfg.Addr unless ln is
// given (tests pass their own listener to learn the port).
func serve(ctx context.Context, cfg config.Config, logger *slog.Logger, ln net.Listener) error {
	return serveWith(ctx, cfg, logger, ln, nil)
}

// serveWith is serve with wrap, when not nil, around the gateway's routes
// (the demo adds its page).
func serveWith(ctx context.Context, cfg config.Config, logger *slog.Logger, ln net.Listener, wrap func(http.Handler) http.Handler) error {
	if err := cfg.CheckServe(); err != nil {
		return err
	}
	if ln == nil {
		var err error
		if ln, err = gateway.Listen(ctx, cfg.Addr, cfg.ReusePort); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	defer ln.Close()

	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "rtgw-read"
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("open database pool: %w", err)
	}
	defer pool.Close()

	rules := cfg.Rules()
	store := &notify.Store{Pool: pool, MaxRowBytes: cfg.MaxRowBytes, KeepColumns: map[string][]string{}, Logger: logger}
	var vis []gateway.Rule
	var claims []string
	for _, r := range rules {
		table := notify.TableName(r.Table)
		vis = append(vis, gateway.Rule{Table: table, Column: r.Column, Claim: r.Claim})
		claims = append(claims, r.Claim)
		// A truncated row keeps the rule's column, so it still reaches its users.
		store.KeepColumns[table] = append(store.KeepColumns[table], r.Column)
	}
	follower := &notify.Follower{
		Store:        store,
		Logger:       logger,
		PollInterval: cfg.PollInterval,
		ReadTimeout:  cfg.LogReadTimeout,
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			cc := poolCfg.ConnConfig.Copy()
			cc.RuntimeParams["application_name"] = "rtgw-listen"
			return pgx.ConnectConfig(ctx, cc)
		},
	}
	replCfg, err := notify.ReplicationConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	// Idle unless the database captures by decoding (gateway migrate with
	// GATEWAY_CAPTURE=decoding); then one replica reads the slot.
	capture := &notify.Capture{
		Pool:   pool,
		Logger: logger,
		Connect: func(ctx context.Context) (*pgconn.PgConn, error) {
			return pgconn.ConnectConfig(ctx, replCfg)
		},
	}
	auth := &gateway.Auth{Secret: []byte(cfg.JWTSecret), Claims: claims}
	if cfg.JWTSecret == "" {
		logger.Warn("AUTHENTICATION IS OFF (GATEWAY_INSECURE_NO_AUTH=true): anyone who reaches this gateway reads every event")
	}
	if cfg.UserActiveSQL != "" {
		auth.Active = func(ctx context.Context, id int64) (bool, error) {
			var ok bool
			err := pool.QueryRow(ctx, cfg.UserActiveSQL, id).Scan(&ok)
			if errors.Is(err, pgx.ErrNoRows) {
				return false, nil
			}
			return ok, err
		}
	}
	proxies, _ := cfg.Proxies() // validated by Load
	srv := gateway.New(logger, store, func() error {
		if st := follower.Status(); !st.Ready() {
			return st.Err
		}
		return nil
	}, gateway.Options{
		Auth:             auth,
		MintWSToken:      cfg.MintWSToken,
		PingInterval:     cfg.PingInterval,
		MaxConnsPerUser:  cfg.MaxConnsUser,
		MaxConns:         cfg.MaxConns,
		AllowedOrigins:   cfg.Origins(),
		Window:           cfg.ReplayEvents,
		SendQueue:        cfg.SendQueue,
		WriteTimeout:     cfg.WriteTimeout,
		Heartbeat:        cfg.Heartbeat,
		Visibility:       vis,
		MaxMessageBytes:  cfg.MaxMessageBytes,
		MessageRate:      cfg.MessageRate,
		MessageBurst:     cfg.MessageBurst,
		MaxConnsPerAddr:  cfg.MaxConnsAddr,
		TrustedProxies:   proxies,
		MaxSSEClients:    cfg.MaxSSEClients,
		MaxPollers:       cfg.MaxPollers,
		MaxTypes:         cfg.MaxTypes,
		MaxTypesBytes:    cfg.MaxTypesBytes,
		HeaderTimeout:    cfg.HeaderTimeout,
		HandshakeTimeout: cfg.HandshakeTimeout,
		IdleTimeout:      cfg.IdleTimeout,
		MaxHeaderBytes:   cfg.MaxHeaderBytes,
		SendBuffer:       cfg.SendBuffer,
		Compression:      cfg.Compression,
		NoIOURing:        !cfg.IOURing,
		OpsToken:         cfg.OpsToken,
		MetricsRoute:     cfg.MetricsAddr == "",
		Sources: gateway.Sources{
			Follower: follower.Status,
			Backlog:  store.Backlog,
			BadInput: func() (notes, rows map[string]uint64) {
				st := follower.Stats()
				return st.BadNotifications, st.BadRows
			},
			Capture: capture.Stats,
		},
	})
	follower.Publish = srv.Hub().Publish
	follower.Trim = srv.Hub().Trim

	httpSrv := srv.HTTPServer()
	if wrap != nil {
		httpSrv.Handler = wrap(httpSrv.Handler)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// The LISTEN connection is dialled while the replay window loads: the
		// gateway is ready only with both, and during a restart amid thousands
		// of reconnecting clients connecting took up to a quarter of a second
		// after the window was read.
		listenConn := predial(gctx, follower.Connect)
		follower.Connect = listenConn.connect
		head, err := load(gctx, logger, store, srv.Hub(), cfg.ReplayEvents, rules)
		if err != nil {
			listenConn.discard()
		}
		if errors.Is(err, notify.ErrRuleMismatch) {
			return err
		}
		if err != nil {
			return nil // ctx ended while the database was unreachable
		}
		follower.From = head
		return follower.Run(gctx)
	})
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error { return capture.Run(gctx) })
	if cfg.MetricsAddr != "" && cfg.MetricsAddr != "off" {
		g.Go(func() error { return serveMetrics(gctx, logger, cfg.MetricsAddr, srv.MetricsHandler()) })
	}
	if cfg.PruneInterval > 0 {
		pruner := &notify.Pruner{Pool: pool, Logger: logger, Interval: cfg.PruneInterval,
			MaxAge: cfg.Retention, MaxEvents: cfg.RetentionEvents, Pruned: srv.Hub().Trim}
		g.Go(func() error { return pruner.Run(gctx) })
	}
	lnOnce := &closeOnce{Listener: ln}
	g.Go(func() error {
		logger.Info("serving", "addr", ln.Addr().String())
		err := httpSrv.Serve(lnOnce)
		if errors.Is(err, http.ErrServerClosed) || gctx.Err() != nil && errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("serve http: %w", err)
	})
	g.Go(func() error {
		<-gctx.Done()
		logger.Info("shutting down")
		// New connections are refused from now on. The clients closed below
		// reconnect at once: refused, they go to another replica or wait for
		// the next process, rather than costing this one a handshake and an
		// answer of 503, and keeping it from exiting while they do.
		_ = lnOnce.Close()
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown)
		defer cancel()
		start := time.Now()
		clients := srv.Hub().Len()
		srv.Close(sctx)
		logger.Info("clients disconnected", "clients", clients, "took", time.Since(start).Round(time.Millisecond).String())
		if err := httpSrv.Shutdown(sctx); err != nil {
			httpSrv.Close()
		}
		logger.Info("http server stopped", "took", time.Since(start).Round(time.Millisecond).String())
		return nil
	})
	return g.Wait()
}

// load fills the replay window from the event log, retrying with backoff
// while the database is unreachable; clients are refused (503) until then.
// The visibility rules are checked against the tracked tables first: a rule
// that cannot be enforced stops the gateway rather than leak or drop rows.
func load(ctx context.Context, logger *slog.Logger, store *notify.Store, hub *gateway.Hub, window int, rules []config.Rule) (notify.Position, error) {
	delay := 100 * time.Millisecond
	for {
		err := notify.CheckRules(ctx, store.Pool, rules)
		if errors.Is(err, notify.ErrRuleMismatch) {
			return notify.Position{}, fmt.Errorf("check GATEWAY_VISIBILITY: %w", err)
		}
		var (
			evs      []notify.Event
			head     notify.Position
			complete bool
		)
		if err == nil {
			evs, head, complete, err = store.Latest(ctx, window)
		}
		if err == nil {
			// head may be a bad row's (skipped) position: the follower reads on
			// after it, while the hub's head stays the newest event it holds.
			hubHead := head
			if len(evs) > 0 {
				hubHead = evs[len(evs)-1].Pos
			}
			hub.Load(evs, hubHead, complete)
			logger.Info("replay window loaded", "events", len(evs), "head", head.String())
			return head, nil
		}
		logger.Warn("load replay window", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return notify.Position{}, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// serveMetrics serves /metrics on a listener of its own (GATEWAY_METRICS_ADDR)
// until ctx ends.
func serveMetrics(ctx context.Context, logger *slog.Logger, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	logger.Info("serving metrics", "addr", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}

// closeOnce lets shutdown close the listener before http.Server.Shutdown
// does it again: the second Close answers as the first did.
type closeOnce struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *closeOnce) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// predialed hands the follower a connection dialled ahead of its first
// call, then dials on every later one.
type predialed struct {
	dial  func(context.Context) (*pgx.Conn, error)
	first chan dialed // the early dial's result; nil once taken
}

type dialed struct {
	conn *pgx.Conn
	err  error
}

func predial(ctx context.Context, dial func(context.Context) (*pgx.Conn, error)) *predialed {
	p := &predialed{dial: dial, first: make(chan dialed, 1)}
	go func() {
		conn, err := dial(ctx)
		p.first <- dialed{conn, err}
	}()
	return p
}

// connect is the follower's Connect; the listener calls it from one
// goroutine at a time.
func (p *predialed) connect(ctx context.Context) (*pgx.Conn, error) {
	if p.first != nil {
		d := <-p.first
		p.first = nil
		if d.err == nil {
			return d.conn, nil
		}
		// The early dial failed (the database was not up yet, say): the
		// database may be reachable by now.
	}
	return p.dial(ctx)
}

// discard closes the early connection when the follower will not run.
func (p *predialed) discard() {
	if p.first == nil {
		return
	}
	if d := <-p.first; d.conn != nil {
		_ = d.conn.Close(context.Background())
	}
	p.first = nil
}
