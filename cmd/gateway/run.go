package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
)

const usage = `usage: gateway [command]

commands:
  demo [--every 2s]     try it: a throwaway PostgreSQL (or DATABASE_URL), sample
                        tables and changes, the gateway on 127.0.0.1:8080 without
                        authentication; Ctrl-C removes everything
  serve                 run the gateway (default)
  migrate [--uninstall] install or upgrade the SQL and track the tables of
                        GATEWAY_TRACK; --uninstall removes everything it made
  config                print every setting: variable, default, meaning
  tail [--json] [--types a,b] [--from ID] [--url URL] [--token T]
                        follow the event stream, one line per event
  healthcheck [--live]  exit 0 when the gateway at GATEWAY_ADDR is ready
                        (/readyz; --live: /healthz), 1 otherwise

Settings come from the environment; see the README.`

// run is main without the process: tests call it with their own arguments,
// environment and output.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		cfg, err := config.Load(environ)
		if err != nil {
			return err
		}
		return serve(ctx, cfg, newLogger(cfg, stderr), nil)
	case "migrate":
		return migrate(ctx, args, environ, stdout, stderr)
	case "demo":
		return demo(ctx, args, environ, stdout, stderr)
	case "tail":
		return tail(ctx, args, environ, stdout, stderr)
	case "healthcheck":
		return healthcheck(ctx, args, environ, stdout, stderr)
	case "config":
		for _, st := range config.Settings() {
			def := st.Default
			if st.Required {
				def = "(required)"
			}
			fmt.Fprintf(stdout, "%s=%s\n    %s\n", st.Var, def, st.Help)
		}
		return nil
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", cmd, usage)
}

func migrate(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	uninstall := fs.Bool("uninstall", false, "remove every object migrate created; application tables and data stay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(environ)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	if *uninstall {
		if err := notify.Uninstall(ctx, conn); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "uninstalled: schema rtgw and its triggers removed")
		return nil
	}
	tracks, _ := config.ParseTrack(cfg.Track) // validated by Load
	if err := notify.Install(ctx, conn, tracks); err != nil {
		return err
	}
	if cfg.Capture == "decoding" {
		if err := notify.CaptureByDecoding(ctx, conn, cfg.CaptureSlot); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "capture: by logical decoding from slot %s (the gateways write the event log)\n", cfg.CaptureSlot)
	} else {
		if err := notify.CaptureByTriggers(ctx, conn, cfg.DatabaseURL, slog.New(slog.NewTextHandler(stderr, nil))); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "capture: by triggers")
	}
	all, err := notify.Tracked(ctx, conn)
	if err != nil {
		return err
	}
	for _, t := range all {
		fmt.Fprintf(stdout, "tracking %s as %s_created, %s_updated, %s_deleted\n", t.Table, t.Prefix, t.Prefix, t.Prefix)
		if t.BatchEvent != "" {
			fmt.Fprintf(stdout, "  a DELETE of several rows sends %s\n", t.BatchEvent)
		}
	}
	return nil
}

// newLogger logs JSON unless asked for text or writing to a terminal.
func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	text := cfg.LogFormat == "text"
	if cfg.LogFormat == "auto" {
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				text = true
			}
		}
	}
	if text {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
