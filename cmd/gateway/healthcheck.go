package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// healthcheck is `gateway healthcheck`, the image's HEALTHCHECK (distroless
// has no curl): it succeeds when the gateway at GATEWAY_ADDR answers 200 on
// /readyz, that is while it can deliver events (LISTEN up and caught up with
// the log); --live asks /healthz, which only says the process serves HTTP.
func healthcheck(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("url", defaultURL(environ), "the gateway's base URL (default from GATEWAY_ADDR)")
	live := fs.Bool("live", false, "check /healthz (the process serves) instead of /readyz (it delivers events)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := "/readyz"
	if *live {
		path = "/healthz"
	}
	u := strings.TrimRight(*base, "/") + path
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	body = bytes.TrimSpace(body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", u, resp.StatusCode, body)
	}
	fmt.Fprintf(stdout, "%s: %s\n", u, body)
	return nil
}
