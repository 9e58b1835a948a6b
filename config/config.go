// Package config loads the gateway's settings from the environment.
//
// Every setting is a field of Config with its variable, default and meaning in
// struct tags, so that the README table and `gateway config` come from one place.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
)

// slotName is what PostgreSQL accepts as a replication slot's name.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Config is every setting of the gateway.
type Config struct {
	DatabaseURL string `env:"DATABASE_URL,notEmpty" help:"PostgreSQL connection URL (required). The gateway reads the event log and LISTENs with it."`
	Addr        string `env:"GATEWAY_ADDR" envDefault:":8080" help:"Address the HTTP server listens on."`
	ReusePort   bool   `env:"GATEWAY_REUSE_PORT" envDefault:"false" help:"Open GATEWAY_ADDR with SO_REUSEPORT (Linux), so that a new gateway can start on the same address while the old one still serves: a restart without refused connections (start the new one, wait until it is ready, then stop the old one). Every process on the address must set it and run as the same user. See \"Restart without a gap\"."`
	Capture     string `env:"GATEWAY_CAPTURE" envDefault:"triggers" help:"How 'gateway migrate' sets the database to capture changes: triggers (statement triggers write the event log in each writer's transaction; works everywhere) or decoding (the gateways read a logical replication slot and write the log themselves, off the writers' path: 2-3x the tracked write throughput at 8 writers, measured; needs wal_level = logical and a role with REPLICATION). Running migrate with the other value switches, losing nothing. Serving follows what the database is set to. See \"Capture by logical decoding\"."`
	CaptureSlot string `env:"GATEWAY_CAPTURE_SLOT" envDefault:"rtgw" help:"Name of the logical replication slot 'gateway migrate' creates for GATEWAY_CAPTURE=decoding (one per database: slots are named across the whole server)."`
	Track       string `env:"GATEWAY_TRACK" envDefault:"facts:budget_fact,articles:article" help:"Tables 'gateway migrate' tracks: table:prefix[:columns[:batch_event/key]] separated by commas. Events are <prefix>_created, _updated, _deleted; a {column} in the prefix takes that column's value; columns (col|col|key=setting.name, * for all) limit what events carry (the primary key is always sent). See \"Tracking tables\"."`

	JWTSecret      string        `env:"GATEWAY_JWT_SECRET" help:"The backend's JWT_SECRET (HS256). WebSockets need ?token= (type ws); other routes the access_token cookie or a Bearer token. Required unless GATEWAY_INSECURE_NO_AUTH=true." secret:"true"`
	InsecureNoAuth bool          `env:"GATEWAY_INSECURE_NO_AUTH" envDefault:"false" help:"Run without authentication: anyone who reaches the gateway reads every event. For demos and tests only."`
	UserActiveSQL  string        `env:"GATEWAY_USER_ACTIVE_SQL" help:"Optional query, given the user id as $1, that must return true for the user to connect, e.g. SELECT is_active FROM t_d_user WHERE id = $1."`
	MintWSToken    bool          `env:"GATEWAY_MINT_WS_TOKEN" envDefault:"false" help:"Also serve POST /api/v1/budget/ws/token (a 5-minute WebSocket token for the access_token cookie's user), for deployments that route it to the gateway."`
	AllowedOrigins string        `env:"GATEWAY_ALLOWED_ORIGINS" help:"Comma-separated origins (https://budget.example.com) whose pages may open WebSockets; empty: only pages of the host the request was sent to. Requests without an Origin header (not from a browser) are allowed; other origins get 403."`
	MaxConnsUser   int           `env:"GATEWAY_MAX_CONNECTIONS_PER_USER" envDefault:"10" help:"WebSocket connections per user on one gateway; more are refused with 403."`
	MaxConns       int           `env:"GATEWAY_MAX_CONNECTIONS" envDefault:"500" help:"WebSocket connections in total on one gateway; more are refused with 403."`
	Visibility     string        `env:"GATEWAY_VISIBILITY" help:"Per-table visibility rules, comma-separated table:column=claim: a row is sent only to users whose token claim (a value or an array; 'user' is the user's id) holds the row's column value, e.g. facts:user_id=user,orders:family_id=families. Tables without a rule are visible to every user. Needs GATEWAY_JWT_SECRET. See \"Subscriptions and visibility\"."`
	PingInterval   time.Duration `env:"GATEWAY_PING_INTERVAL" envDefault:"10s" help:"Interval of the {\"type\":\"ping\"} frame on WebSockets (the app's client marks a link stale after 45 s of silence); each connection gets one per interval, the round spread over it."`

	MaxConnsAddr     int           `env:"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS" envDefault:"50" help:"WebSockets, SSE streams and long-polls open at once from one client address (an IPv6 client counts by its /64), together; more are refused: WebSocket with 403, SSE and long-poll with 429 and Retry-After."`
	TrustedProxies   string        `env:"GATEWAY_TRUSTED_PROXIES" envDefault:"127.0.0.0/8,::1/128" help:"Comma-separated addresses or CIDR ranges of the proxies (nginx) whose X-Forwarded-For or X-Real-IP names the client. A request from any other peer is counted by the peer's own address; none: trust no proxy."`
	MaxSSEClients    int           `env:"GATEWAY_MAX_SSE_CLIENTS" envDefault:"100" help:"SSE streams open at once on one gateway; more are refused with 503 and Retry-After."`
	MaxPollers       int           `env:"GATEWAY_MAX_POLLERS" envDefault:"500" help:"Long-poll requests in progress at once on one gateway; more are refused with 503 and Retry-After."`
	MaxTypes         int           `env:"GATEWAY_MAX_TYPES" envDefault:"64" help:"Event types one SSE ?types= filter may list; more are refused with 400."`
	MaxTypesBytes    int           `env:"GATEWAY_MAX_TYPES_BYTES" envDefault:"2048" help:"Longest SSE ?types= value, in bytes; a longer one is refused with 400."`
	MaxMessageBytes  int64         `env:"GATEWAY_MAX_MESSAGE_BYTES" envDefault:"4096" help:"Largest message a WebSocket client may send; a larger one closes the socket with 1009."`
	MessageRate      float64       `env:"GATEWAY_MESSAGE_RATE" envDefault:"2" help:"Messages per second a WebSocket client may send on average (token bucket; control pings count too). The app's client sends a ping every 25-30 s. A client over the rate is closed with 1008."`
	MessageBurst     int           `env:"GATEWAY_MESSAGE_BURST" envDefault:"20" help:"Messages a WebSocket client may send at once, before GATEWAY_MESSAGE_RATE applies (the bucket's size)."`
	HeaderTimeout    time.Duration `env:"GATEWAY_HEADER_TIMEOUT" envDefault:"10s" help:"Time a client has to send a request's line and headers (and the body of /ws/disconnect); a connection that has not by then is closed (slowloris)."`
	HandshakeTimeout time.Duration `env:"GATEWAY_HANDSHAKE_TIMEOUT" envDefault:"10s" help:"Deadline for writing the WebSocket upgrade answer (101) to the client."`
	IdleTimeout      time.Duration `env:"GATEWAY_IDLE_TIMEOUT" envDefault:"2m" help:"How long a keep-alive HTTP connection may wait for its next request before it is closed."`
	MaxHeaderBytes   int           `env:"GATEWAY_MAX_HEADER_BYTES" envDefault:"32768" help:"Largest request line plus headers, in bytes (Go allows 4 KiB over it); a larger request gets 431."`
	Compression      bool          `env:"GATEWAY_WS_COMPRESSION" envDefault:"false" help:"Offer permessage-deflate to WebSocket clients that ask for it (browsers do). Each event is compressed once for all of them (no context takeover): CPU per event, fewer bytes per delivery. Off by default: next to the backend and its proxy, bandwidth is cheap and CPU is not."`
	IOURing          bool          `env:"GATEWAY_IO_URING" envDefault:"true" help:"Write to WebSocket clients through io_uring where the kernel allows it (Linux 5.12 or later, and not refused by a seccomp profile, as Docker's default is since 25.0, or kernel.io_uring_disabled): a fan-out worker hands the kernel up to 32 sockets' frames in one system call instead of a write(2) each: 35-45% less CPU per delivery on the virtual machines measured, when each event goes out as its own frame. Where it is refused the gateway says so at start and writes each socket with write(2); false does that always."`
	SendBuffer       int           `env:"GATEWAY_SOCKET_SEND_BUFFER" envDefault:"0" help:"Kernel send buffer (SO_SNDBUF) of each client socket, in bytes; 0 leaves it to the OS, which grows it up to net.ipv4.tcp_wmem's maximum (4 MiB by default). A smaller one bounds the kernel memory a stalled client pins and lets the gateway notice it sooner."`

	ReplayEvents    int           `env:"GATEWAY_REPLAY_EVENTS" envDefault:"10000" help:"Events kept in memory for resuming clients; older positions are read from the event log table."`
	MaxRowBytes     int           `env:"GATEWAY_MAX_ROW_BYTES" envDefault:"1048576" help:"Largest row (as JSON) sent in full; a larger one is sent as its primary key with \"truncated\": true."`
	Retention       time.Duration `env:"GATEWAY_RETENTION" envDefault:"24h" help:"How long the event log keeps events; clients resuming from older ids get a reset (expired)."`
	RetentionEvents int64         `env:"GATEWAY_RETENTION_EVENTS" envDefault:"1000000" help:"About how many of the newest events the event log keeps at most, whatever their age."`
	PruneInterval   time.Duration `env:"GATEWAY_PRUNE_INTERVAL" envDefault:"1m" help:"How often a gateway prunes the event log (replicas take turns; 0s disables pruning on this one)."`
	PollInterval    time.Duration `env:"GATEWAY_POLL_INTERVAL" envDefault:"2s" help:"Safety poll of the event log, in case a notification is missed (NOTIFY is only a doorbell)."`
	SendQueue       int           `env:"GATEWAY_SEND_QUEUE" envDefault:"256" help:"Frames queued per connection. A client whose queue is full pulls the next events from the replay window as it drains; one that falls out of the window is disconnected (close code 4008) and resumes from its last id."`
	LogReadTimeout  time.Duration `env:"GATEWAY_LOG_READ_TIMEOUT" envDefault:"10s" help:"Deadline for one read of the event log; a read stuck on a dead database connection fails, is retried on a fresh one, and /readyz says not ready meanwhile."`
	WriteTimeout    time.Duration `env:"GATEWAY_WRITE_TIMEOUT" envDefault:"10s" help:"Deadline for one write to a client socket."`
	Heartbeat       time.Duration `env:"GATEWAY_SSE_HEARTBEAT" envDefault:"15s" help:"Interval of SSE heartbeat comments when no event is sent."`
	Shutdown        time.Duration `env:"GATEWAY_SHUTDOWN_TIMEOUT" envDefault:"10s" help:"How long SIGTERM waits for connections to close before exiting anyway."`
	OpsToken        string        `env:"GATEWAY_OPS_TOKEN" help:"Token for the operations page /ops (open /ops?token=..., or send it as a Bearer token). Empty: /ops takes the app's access token when GATEWAY_JWT_SECRET is set, and is open without authentication. See \"Operations page\"." secret:"true"`
	MetricsAddr     string        `env:"GATEWAY_METRICS_ADDR" help:"Where Prometheus metrics are served: empty for /metrics on GATEWAY_ADDR, host:port for /metrics on a listener of their own (and not on GATEWAY_ADDR), off for nowhere. /metrics has no authentication. See \"Metrics\"."`
	LogLevel        slog.Level    `env:"GATEWAY_LOG_LEVEL" envDefault:"info" help:"Log level: debug, info, warn or error."`
	LogFormat       string        `env:"GATEWAY_LOG_FORMAT" envDefault:"auto" help:"Log format: json, text, or auto (text on a terminal, JSON otherwise)."`
}

// Track is one table to track and how its events are named and shaped (see
// rtgw.track in sql/install.sql).
type Track struct {
	Table      string
	Prefix     string            // may hold one {column}, whose value it takes
	Columns    []string          // nil: every column
	Settings   map[string]string // data key -> transaction-local setting
	BatchEvent string            // event of a DELETE of several rows; "" for one per row
	BatchKey   string            // its key for the list of ids
}

// Load reads the settings from environ (as os.Environ gives them) and
// validates them. It has no side effects, so tests pass a literal slice.
func Load(environ []string) (Config, error) {
	cfg, err := env.ParseAsWithOptions[Config](env.Options{Environment: env.ToMap(environ)})
	if err != nil {
		return Config{}, fmt.Errorf("read environment: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func (c Config) validate() error {
	var errs []error
	if _, err := ParseTrack(c.Track); err != nil {
		errs = append(errs, err)
	}
	if _, err := ParseRules(c.Visibility); err != nil {
		errs = append(errs, err)
	}
	if c.Capture != "triggers" && c.Capture != "decoding" {
		errs = append(errs, fmt.Errorf("GATEWAY_CAPTURE must be triggers or decoding, got %q", c.Capture))
	}
	if !slotName.MatchString(c.CaptureSlot) {
		errs = append(errs, fmt.Errorf("GATEWAY_CAPTURE_SLOT must be 1-63 lower-case letters, digits and underscores (a replication slot's name), got %q", c.CaptureSlot))
	}
	for _, o := range c.Origins() {
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, fmt.Errorf("GATEWAY_ALLOWED_ORIGINS: %q is not an origin such as https://budget.example.com", o))
		}
	}
	if c.MaxConnsUser < 1 || c.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("GATEWAY_MAX_CONNECTIONS_PER_USER and GATEWAY_MAX_CONNECTIONS must be at least 1, got %d and %d", c.MaxConnsUser, c.MaxConns))
	}
	if _, err := c.Proxies(); err != nil {
		errs = append(errs, err)
	}
	for name, n := range map[string]int64{
		"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": int64(c.MaxConnsAddr), "GATEWAY_MAX_SSE_CLIENTS": int64(c.MaxSSEClients),
		"GATEWAY_MAX_POLLERS": int64(c.MaxPollers), "GATEWAY_MAX_TYPES": int64(c.MaxTypes),
		"GATEWAY_MAX_TYPES_BYTES": int64(c.MaxTypesBytes), "GATEWAY_MAX_MESSAGE_BYTES": c.MaxMessageBytes,
		"GATEWAY_MESSAGE_BURST": int64(c.MessageBurst), "GATEWAY_MAX_HEADER_BYTES": int64(c.MaxHeaderBytes),
	} {
		if n < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1, got %d", name, n))
		}
	}
	if !(c.MessageRate > 0) || math.IsInf(c.MessageRate, 0) {
		errs = append(errs, fmt.Errorf("GATEWAY_MESSAGE_RATE must be a positive number of messages per second, got %v", c.MessageRate))
	}
	if c.SendBuffer < 0 {
		errs = append(errs, fmt.Errorf("GATEWAY_SOCKET_SEND_BUFFER must not be negative, got %d", c.SendBuffer))
	}
	if c.ReplayEvents < 1 {
		errs = append(errs, fmt.Errorf("GATEWAY_REPLAY_EVENTS must be at least 1, got %d", c.ReplayEvents))
	}
	if c.MaxRowBytes < 64 {
		errs = append(errs, fmt.Errorf("GATEWAY_MAX_ROW_BYTES must be at least 64, got %d", c.MaxRowBytes))
	}
	if c.Retention <= 0 || c.RetentionEvents < 1 || c.PruneInterval < 0 {
		errs = append(errs, fmt.Errorf("GATEWAY_RETENTION and GATEWAY_RETENTION_EVENTS must be positive and GATEWAY_PRUNE_INTERVAL not negative, got %s, %d, %s", c.Retention, c.RetentionEvents, c.PruneInterval))
	}
	if c.SendQueue < 1 {
		errs = append(errs, fmt.Errorf("GATEWAY_SEND_QUEUE must be at least 1, got %d", c.SendQueue))
	}
	for name, d := range map[string]time.Duration{
		"GATEWAY_POLL_INTERVAL": c.PollInterval, "GATEWAY_LOG_READ_TIMEOUT": c.LogReadTimeout, "GATEWAY_WRITE_TIMEOUT": c.WriteTimeout,
		"GATEWAY_SSE_HEARTBEAT": c.Heartbeat, "GATEWAY_SHUTDOWN_TIMEOUT": c.Shutdown, "GATEWAY_PING_INTERVAL": c.PingInterval,
		"GATEWAY_HEADER_TIMEOUT": c.HeaderTimeout, "GATEWAY_HANDSHAKE_TIMEOUT": c.HandshakeTimeout, "GATEWAY_IDLE_TIMEOUT": c.IdleTimeout,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", name, d))
		}
	}
	if c.MetricsAddr != "" && c.MetricsAddr != "off" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("GATEWAY_METRICS_ADDR must be empty, off, or host:port such as 127.0.0.1:9090, got %q", c.MetricsAddr))
		}
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		errs = append(errs, fmt.Errorf("GATEWAY_LOG_FORMAT must be auto, json or text, got %q", c.LogFormat))
	}
	return errors.Join(errs...)
}

// Origins splits GATEWAY_ALLOWED_ORIGINS.
func (c Config) Origins() []string {
	var out []string
	for o := range strings.SplitSeq(c.AllowedOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// Proxies parses GATEWAY_TRUSTED_PROXIES: addresses (a /32 or /128) or
// CIDR ranges, or "none" (an empty value means the default).
func (c Config) Proxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	if strings.TrimSpace(c.TrustedProxies) == "none" {
		return nil, nil
	}
	for item := range strings.SplitSeq(c.TrustedProxies, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		if ip, err := netip.ParseAddr(item); err == nil {
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_TRUSTED_PROXIES: %q is not an address or a CIDR range such as 10.0.0.0/8", item)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ErrNoAuth: serving needs a JWT secret or an explicit opt-out.
var ErrNoAuth = errors.New("GATEWAY_JWT_SECRET is not set: set it to the backend's JWT_SECRET, or set GATEWAY_INSECURE_NO_AUTH=true to serve every event to anyone who connects")

// CheckServe validates what only serving needs (migrate has no use for the
// JWT secret).
func (c Config) CheckServe() error {
	if c.JWTSecret == "" && !c.InsecureNoAuth {
		return ErrNoAuth
	}
	if c.JWTSecret == "" && strings.TrimSpace(c.Visibility) != "" {
		return errors.New("GATEWAY_VISIBILITY needs GATEWAY_JWT_SECRET: without authentication there is no user to apply the rules to")
	}
	return nil
}

// Rule is one visibility rule: rows of Table go only to users whose token
// claim Claim holds the row's Column value ("user": the user's id).
type Rule struct {
	Table, Column, Claim string
}

// Rules parses GATEWAY_VISIBILITY (checked by Load).
func (c Config) Rules() []Rule {
	rules, _ := ParseRules(c.Visibility)
	return rules
}

// ParseRules parses a GATEWAY_VISIBILITY value: rules separated by commas,
// each table:column=claim, at most one per table, e.g.
//
//	facts:user_id=user,orders:family_id=families
func ParseRules(s string) ([]Rule, error) {
	var rules []Rule
	seen := map[string]bool{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		table, rest, ok1 := strings.Cut(item, ":")
		col, claim, ok2 := strings.Cut(rest, "=")
		r := Rule{Table: table, Column: col, Claim: claim}
		if !ok1 || !ok2 || !identRe.MatchString(r.Table) || !columnRe.MatchString(r.Column) || !nameRe.MatchString(r.Claim) {
			return nil, fmt.Errorf("GATEWAY_VISIBILITY: %q is not table:column=claim, such as facts:user_id=user", item)
		}
		if seen[r.Table] {
			return nil, fmt.Errorf("GATEWAY_VISIBILITY: table %q has two rules", r.Table)
		}
		seen[r.Table] = true
		rules = append(rules, r)
	}
	return rules, nil
}

var (
	identRe   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$`)
	prefixRe  = regexp.MustCompile(`^([A-Za-z_]|\{[A-Za-z_][A-Za-z0-9_]*\})([A-Za-z0-9_]|\{[A-Za-z_][A-Za-z0-9_]*\})*$`)
	nameRe    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	columnRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
	settingRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_.]*$`)
)

// ParseTrack parses a GATEWAY_TRACK value: entries separated by commas, each
//
//	table:prefix[:columns[:batch_event/batch_key]]
//
// where prefix may hold one {column} (its value names the event), columns is
// a |-separated whitelist whose items are column names, * (every column), or
// key=setting.name (a data key from a transaction-local setting), e.g.
//
//	facts:budget_fact,articles:article
//	t_f_budget_fact:{record_type}:id|amount|tab_origin_id=budget.tab_origin_id:facts_batch_deleted/fact_ids
func ParseTrack(s string) ([]Track, error) {
	var out []Track
	seen := map[string]bool{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		parts := strings.Split(item, ":")
		if len(parts) < 2 || len(parts) > 4 {
			return nil, fmt.Errorf("GATEWAY_TRACK: %q is not table:prefix[:columns[:batch_event/key]]", item)
		}
		t := Track{Table: parts[0], Prefix: parts[1]}
		if !identRe.MatchString(t.Table) {
			return nil, fmt.Errorf("GATEWAY_TRACK: %q is not a table name", t.Table)
		}
		if !prefixRe.MatchString(t.Prefix) || strings.Count(t.Prefix, "{") > 1 {
			return nil, fmt.Errorf("GATEWAY_TRACK: prefix %q must be letters, digits and _ (not first), with at most one {column}", t.Prefix)
		}
		if len(parts) >= 3 {
			all := false
			for col := range strings.SplitSeq(parts[2], "|") {
				if k, v, ok := strings.Cut(col, "="); ok {
					if !nameRe.MatchString(k) || !settingRe.MatchString(v) {
						return nil, fmt.Errorf("GATEWAY_TRACK: %q is not key=setting.name", col)
					}
					if t.Settings == nil {
						t.Settings = map[string]string{}
					}
					t.Settings[k] = v
					continue
				}
				if col == "*" {
					all = true
					continue
				}
				if !columnRe.MatchString(col) {
					return nil, fmt.Errorf("GATEWAY_TRACK: %q is not a column name", col)
				}
				t.Columns = append(t.Columns, col)
			}
			if all {
				t.Columns = nil
			} else if t.Columns == nil {
				return nil, fmt.Errorf("GATEWAY_TRACK: %q lists no column; use * for every column", item)
			}
		}
		if len(parts) == 4 {
			ev, key, _ := strings.Cut(parts[3], "/")
			if !nameRe.MatchString(ev) || (key != "" && !nameRe.MatchString(key)) {
				return nil, fmt.Errorf("GATEWAY_TRACK: %q is not batch_event[/key]", parts[3])
			}
			t.BatchEvent, t.BatchKey = ev, key
		}
		if seen[t.Table] {
			return nil, fmt.Errorf("GATEWAY_TRACK: table %q listed twice", t.Table)
		}
		seen[t.Table] = true
		out = append(out, t)
	}
	return out, nil
}
