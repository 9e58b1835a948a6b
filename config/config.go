// Package config loads the gateway's settings from the environment.
//
// Every setting is a field of Config with its variable, default and meaning in
// struct tags, so that the README table and `gateway config` come from one place.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
)

// Config is every setting of the gateway.
type Config struct {
	DatabaseURL string `env:"DATABASE_URL,notEmpty" help:"PostgreSQL connection URL (required). The gateway reads the event log and LISTENs with it."`
	Addr        string `env:"GATEWAY_ADDR" envDefault:":8080" help:"Address the HTTP server listens on."`
	Track       string `env:"GATEWAY_TRACK" envDefault:"facts:budget_fact,articles:article" help:"Tables 'gateway migrate' tracks, as table:prefix[:col|col...] separated by commas. Events are <prefix>_created, _updated, _deleted; the optional columns limit what events carry (the primary key is always sent)."`

	ReplayEvents int           `env:"GATEWAY_REPLAY_EVENTS" envDefault:"10000" help:"Events kept in memory for resuming clients; older positions are read from the event log table."`
	MaxRowBytes  int           `env:"GATEWAY_MAX_ROW_BYTES" envDefault:"1048576" help:"Largest row (as JSON) sent in full; a larger one is sent as its primary key with \"truncated\": true."`
	PollInterval time.Duration `env:"GATEWAY_POLL_INTERVAL" envDefault:"2s" help:"Safety poll of the event log, in case a notification is missed (NOTIFY is only a doorbell)."`
	SendQueue    int           `env:"GATEWAY_SEND_QUEUE" envDefault:"256" help:"Frames queued per connection. A client whose queue is full pulls the next events from the replay window as it drains; one that falls out of the window is disconnected (close code 4008) and resumes from its last id."`
	WriteTimeout time.Duration `env:"GATEWAY_WRITE_TIMEOUT" envDefault:"10s" help:"Deadline for one write to a client socket."`
	Heartbeat    time.Duration `env:"GATEWAY_SSE_HEARTBEAT" envDefault:"15s" help:"Interval of SSE heartbeat comments when no event is sent."`
	Shutdown     time.Duration `env:"GATEWAY_SHUTDOWN_TIMEOUT" envDefault:"10s" help:"How long SIGTERM waits for connections to close before exiting anyway."`
	LogLevel     slog.Level    `env:"GATEWAY_LOG_LEVEL" envDefault:"info" help:"Log level: debug, info, warn or error."`
	LogFormat    string        `env:"GATEWAY_LOG_FORMAT" envDefault:"auto" help:"Log format: json, text, or auto (text on a terminal, JSON otherwise)."`
}

// Track is one table to track and the prefix of its event names.
type Track struct {
	Table   string
	Prefix  string
	Columns []string // nil: every column
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
	if c.ReplayEvents < 1 {
		errs = append(errs, fmt.Errorf("GATEWAY_REPLAY_EVENTS must be at least 1, got %d", c.ReplayEvents))
	}
	if c.MaxRowBytes < 64 {
		errs = append(errs, fmt.Errorf("GATEWAY_MAX_ROW_BYTES must be at least 64, got %d", c.MaxRowBytes))
	}
	if c.SendQueue < 1 {
		errs = append(errs, fmt.Errorf("GATEWAY_SEND_QUEUE must be at least 1, got %d", c.SendQueue))
	}
	for name, d := range map[string]time.Duration{
		"GATEWAY_POLL_INTERVAL": c.PollInterval, "GATEWAY_WRITE_TIMEOUT": c.WriteTimeout,
		"GATEWAY_SSE_HEARTBEAT": c.Heartbeat, "GATEWAY_SHUTDOWN_TIMEOUT": c.Shutdown,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", name, d))
		}
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		errs = append(errs, fmt.Errorf("GATEWAY_LOG_FORMAT must be auto, json or text, got %q", c.LogFormat))
	}
	return errors.Join(errs...)
}

var (
	identRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$`)
	prefixRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	columnRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
)

// ParseTrack parses a GATEWAY_TRACK value such as
// "facts:budget_fact,articles:article:id|name".
func ParseTrack(s string) ([]Track, error) {
	var out []Track
	seen := map[string]bool{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		parts := strings.Split(item, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("GATEWAY_TRACK: %q is not table:prefix[:col|col]", item)
		}
		t := Track{Table: parts[0], Prefix: parts[1]}
		if !identRe.MatchString(t.Table) {
			return nil, fmt.Errorf("GATEWAY_TRACK: %q is not a table name", t.Table)
		}
		if !prefixRe.MatchString(t.Prefix) {
			return nil, fmt.Errorf("GATEWAY_TRACK: prefix %q must be letters, digits and _", t.Prefix)
		}
		if len(parts) == 3 {
			for col := range strings.SplitSeq(parts[2], "|") {
				if !columnRe.MatchString(col) {
					return nil, fmt.Errorf("GATEWAY_TRACK: %q is not a column name", col)
				}
				t.Columns = append(t.Columns, col)
			}
		}
		if seen[t.Table] {
			return nil, fmt.Errorf("GATEWAY_TRACK: table %q listed twice", t.Table)
		}
		seen[t.Table] = true
		out = append(out, t)
	}
	return out, nil
}
