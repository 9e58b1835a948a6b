package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/notify"
)

// options are the flags of a run.
type options struct {
	url, db         string
	ws, sse         int
	rate            float64
	rowsPerCommit   int
	writers         int
	duration, grace time.Duration
	sources         int
	batch           bool
	secret          string
	pid             int
	restartCmd      string
	restartAt       time.Duration
	setup           bool
	parallel        int
	backoff         time.Duration
	json            bool
	cpuProfile      string
	readPause       time.Duration
	readURing       bool
	metricsURL      string

	// wrap, when set, wraps client i's transport: tests use it to make a
	// client misbehave against the real gateway.
	wrap func(i int, tr transport) transport
}

func parseFlags(args, environ []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("rtload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8080", "the gateway's base URL")
	fs.StringVar(&o.db, "db", getenv(environ, "DATABASE_URL"), "PostgreSQL URL of the gateway's database (default DATABASE_URL)")
	fs.IntVar(&o.ws, "ws", 100, "WebSocket clients")
	fs.IntVar(&o.sse, "sse", 0, "SSE clients")
	fs.Float64Var(&o.rate, "rate", 100, "rows committed per second")
	fs.IntVar(&o.rowsPerCommit, "rows-per-commit", 1, "rows inserted by each commit (one statement)")
	fs.IntVar(&o.writers, "writers", 2, "database connections committing in parallel")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long the writer commits (at most 25m)")
	fs.DurationVar(&o.grace, "grace", 5*time.Second, "how long after the last commit clients may take to receive everything; what is missing then is lost")
	fs.IntVar(&o.sources, "sources", -1, "loopback source addresses 127.0.0.2.. to spread clients over (-1: one per 40 clients when the gateway is on loopback; 0: none)")
	fs.BoolVar(&o.batch, "batch", false, "ask for batched frames (?batch=1: one frame may hold an array of events)")
	fs.StringVar(&o.secret, "jwt-secret", getenv(environ, "GATEWAY_JWT_SECRET"), "mint a WebSocket token per client with this secret (default GATEWAY_JWT_SECRET; empty: the gateway runs without authentication)")
	fs.IntVar(&o.pid, "pid", 0, "the gateway's process id, for its CPU and memory (0: the process listening on the URL's port, when local)")
	fs.StringVar(&o.restartCmd, "restart-cmd", "", "shell command run once mid-run that restarts the gateway (reconnect storm); it should return once the new gateway is started")
	fs.DurationVar(&o.restartAt, "restart-at", 0, "when to run -restart-cmd, from the first commit (default half of -duration)")
	fs.BoolVar(&o.setup, "setup", false, "create the demo's tables and track them (as `gateway demo` does) before the run")
	fs.IntVar(&o.parallel, "connect-parallel", 100, "connections opened at once while the clients connect")
	fs.DurationVar(&o.backoff, "backoff-max", time.Second, "longest wait between two reconnect attempts (full jitter)")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
	fs.StringVar(&o.metricsURL, "metrics-url", "", "the gateway's Prometheus metrics, for its own count of deliveries (default: /metrics on -url)")
	fs.DurationVar(&o.readPause, "read-pause", time.Millisecond, "WebSocket readers (Linux) rest this long after a round that found few sockets ready: less tool CPU per delivery, up to this much more measured latency (0: read as data arrives)")
	fs.BoolVar(&o.readURing, "read-io-uring", false, "WebSocket readers (Linux) read the sockets each round found ready in one io_uring call rather than a read(2) each, where the kernel allows: about a fifth less tool CPU per delivery, but on loopback the gateway's CPU per delivery then includes more of the receiving side's kernel work (README, Load tool)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the tool's own CPU profile to this file (is the tool the bottleneck?)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.db == "":
		return o, errors.New("no database: set DATABASE_URL or pass -db")
	case o.ws < 0 || o.sse < 0 || o.ws+o.sse == 0:
		return o, errors.New("-ws and -sse: at least one client")
	case !(o.rate > 0) || o.rowsPerCommit < 1 || o.writers < 1 || o.parallel < 1:
		return o, errors.New("-rate, -rows-per-commit, -writers and -connect-parallel must be positive")
	case o.readPause < 0 || o.readPause > 100*time.Millisecond:
		return o, errors.New("-read-pause must be between 0 and 100ms")
	case o.duration <= 0 || o.duration > 25*time.Minute || o.grace < 0 || o.grace > 5*time.Minute:
		// The clock counts microseconds in an int32: 35 minutes in all.
		return o, errors.New("-duration must be between 0 and 25m, -grace between 0 and 5m")
	}
	if o.restartAt == 0 {
		o.restartAt = o.duration / 2
	}
	if o.sources < 0 {
		o.sources = 0
		if u, err := url.Parse(o.url); err == nil {
			if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() && ip.To4() != nil {
				o.sources = (o.ws + o.sse + 39) / 40
			}
		}
	}
	return o, nil
}

func getenv(environ []string, key string) string {
	for i := len(environ) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(environ[i], key+"="); ok {
			return v
		}
	}
	return ""
}

// run is main without the process: tests call it.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, environ, stderr)
	if err != nil {
		return err
	}
	readPause.Store(int64(o.readPause))
	readURing.Store(o.readURing)
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("create profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := load(ctx, logger, o)
	if err != nil {
		return err
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	} else {
		rep.print(stdout)
	}
	return rep.verdict()
}

// waitReady waits for /readyz and returns the head it reports, the id
// every client starts after: a client cut before its first event then
// resumes without a gap.
func waitReady(ctx context.Context, base string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var body struct {
				Head string `json:"head"`
			}
			err = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				if body.Head == "0-0" {
					body.Head = "" // an empty log: "now" is its start
				}
				return body.Head, nil
			}
			if err == nil {
				err = fmt.Errorf("readyz: %s", resp.Status)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for the gateway at %s to be ready: %w", base, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// openDB opens the writer's pool and checks the table.
func openDB(ctx context.Context, o options) (*pgxpool.Pool, error) {
	if o.setup {
		if err := notify.InstallDemo(ctx, o.db); err != nil {
			return nil, err
		}
	}
	cfg, err := pgxpool.ParseConfig(o.db)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	cfg.MaxConns = int32(o.writers + 1)
	cfg.ConnConfig.RuntimeParams["application_name"] = "rtload"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := checkTable(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

func runID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// gatewayPID is -pid, or the local process listening on the URL's port.
func gatewayPID(o options) (int, error) {
	if o.pid != 0 {
		return o.pid, nil
	}
	u, err := url.Parse(o.url)
	if err != nil {
		return 0, fmt.Errorf("parse -url: %w", err)
	}
	port, _ := strconv.Atoi(u.Port())
	if port == 0 {
		port = map[string]int{"https": 443}[u.Scheme]
		if port == 0 {
			port = 80
		}
	}
	return pidByPort(port)
}
