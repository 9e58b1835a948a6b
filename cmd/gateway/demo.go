package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/gateway"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgcluster"
)

// demoPage is the page the demo serves at /: the events as they arrive,
// through client.js.
//
//go:embed demo.html
var demoPage []byte

// demo runs a gateway without authentication on loopback in front of a
// throwaway PostgreSQL (or DATABASE_URL), writes sample changes, and
// removes everything it started when ctx ends.
func demo(ctx context.Context, args, environ []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	every := fs.Duration("every", 2*time.Second, "time between two sample changes (0: write none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	getenv := func(key string) string { return lookupEnv(environ, key) }

	dbURL := getenv("DATABASE_URL")
	if dbURL == "" {
		fmt.Fprintln(stdout, "No DATABASE_URL: starting a throwaway PostgreSQL cluster...")
		c, err := pgcluster.New("gateway-demo-")
		if errors.Is(err, pgcluster.ErrNoBinaries) {
			return fmt.Errorf("%w: install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql), "+
				"or set DATABASE_URL to a database the demo may create two tables in", err)
		}
		if err != nil {
			return fmt.Errorf("start PostgreSQL: %w", err)
		}
		defer func() {
			if cerr := c.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("remove the throwaway PostgreSQL: %w", cerr))
				return
			}
			fmt.Fprintf(stdout, "Removed the throwaway PostgreSQL cluster and %s.\n", c.Dir())
		}()
		dbURL = c.URL("postgres")
		fmt.Fprintf(stdout, "PostgreSQL %d on 127.0.0.1:%d, data in %s (removed on exit).\n", c.Major(), c.Port(), c.Dir())
	}
	if ctx.Err() != nil {
		return nil
	}

	addr := getenv("GATEWAY_ADDR")
	fixedAddr := addr != ""
	if !fixedAddr {
		addr = "127.0.0.1:8080" // loopback: the demo has no authentication
	}
	// Later entries win (config.Load reads them into a map in order).
	cfg, err := config.Load(slices.Concat(environ, []string{
		"DATABASE_URL=" + dbURL, "GATEWAY_ADDR=" + addr, "GATEWAY_TRACK=" + notify.DemoTrack,
		"GATEWAY_JWT_SECRET=", "GATEWAY_INSECURE_NO_AUTH=true"}))
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)

	if err := notify.InstallDemo(ctx, dbURL); err != nil {
		return err
	}
	ln, err := gateway.Listen(ctx, addr, false)
	if err != nil && !fixedAddr {
		// Port 8080 is taken: any free port will do for a demo.
		ln, err = gateway.Listen(ctx, "127.0.0.1:0", false)
	}
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	base := "http://" + ln.Addr().String()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serveWith(ctx, cfg, logger, ln, demoHandler) }()
	if err := demoWaitReady(ctx, base, served); err != nil {
		cancel()
		return errors.Join(err, <-served)
	}
	if ctx.Err() == nil {
		printDemo(stdout, base, dbURL, *every)
	}

	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		demoTrickle(ctx, logger, dbURL, *every)
	}()
	err = <-served
	cancel()
	<-wrote
	fmt.Fprintln(stdout, "Gateway stopped.")
	return err
}

// demoHandler adds the demo page at / to the gateway's routes.
func demoHandler(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(demoPage)
	})
	mux.Handle("/", next)
	return mux
}

// demoWaitReady waits for /readyz, the gateway's own readiness signal, so
// that the URLs are printed when they work.
func demoWaitReady(ctx context.Context, base string, served <-chan error) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	reason := ""
	for {
		select {
		case err := <-served:
			return fmt.Errorf("gateway stopped before it was ready: %w", err)
		case <-ctx.Done():
			return nil
		default:
		}
		if resp, err := client.Get(base + "/readyz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			reason = strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gateway not ready after 60s: %s", reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func printDemo(w io.Writer, base, dbURL string, every time.Duration) {
	ws := "ws" + strings.TrimPrefix(base, "http")
	fmt.Fprintf(w, `
The budget real-time gateway is running. Open:

  page       %s/
  SSE        curl -N %s/api/v1/budget/events
  WebSocket  %s/api/v1/budget/ws
  tail       gateway tail --url %s
  database   psql '%s'
             (INSERT INTO facts (article_id, amount) VALUES (1, 1500); and watch the event arrive)

`, base, base, ws, base, dbURL)
	if every > 0 {
		fmt.Fprintf(w, "A sample change is written every %s.\n", every)
	}
	fmt.Fprintf(w, "AUTHENTICATION IS OFF: anyone who reaches %s reads every event. Ctrl-C stops everything.\n\n",
		strings.TrimPrefix(base, "http://"))
}

// demoTrickle writes a sample change every interval until ctx ends: mostly
// new facts, some updates and deletes, now and then an article change.
func demoTrickle(ctx context.Context, logger *slog.Logger, dbURL string, every time.Duration) {
	if every <= 0 {
		return
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		logger.Warn("demo: open database pool", "err", err)
		return
	}
	defer pool.Close()
	descriptions := []string{"bread and milk", "bus ticket", "coffee", "monthly rent", "salary", "vegetables", "cinema"}
	for {
		var sql string
		var args []any
		switch n := rand.IntN(10); {
		case n < 6:
			recordType := "fact"
			if rand.IntN(5) == 0 {
				recordType = "plan"
			}
			sql = `INSERT INTO facts (article_id, amount, fact_date, description, record_type)
			       SELECT id, $1, current_date - $2::int, $3, $4 FROM articles ORDER BY random() LIMIT 1`
			args = []any{100 * (1 + rand.IntN(500)), rand.IntN(28), descriptions[rand.IntN(len(descriptions))], recordType}
		case n < 8:
			sql = `UPDATE facts SET amount = $1 WHERE id = (SELECT id FROM facts ORDER BY random() LIMIT 1)`
			args = []any{100 * (1 + rand.IntN(500))}
		case n < 9:
			sql = `DELETE FROM facts WHERE id = (SELECT min(id) FROM facts) AND (SELECT count(*) FROM facts) > 10`
		default:
			sql = `UPDATE articles SET is_active = NOT is_active WHERE id = (SELECT id FROM articles ORDER BY random() LIMIT 1)`
		}
		if _, err := pool.Exec(ctx, sql, args...); err != nil && ctx.Err() == nil {
			logger.Warn("demo: write a sample change", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
