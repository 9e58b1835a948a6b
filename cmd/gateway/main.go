// Command gateway is the budget real-time gateway: it pushes committed
// changes of tracked PostgreSQL tables to browsers over WebSocket and SSE.
//
//	gateway demo                try it: throwaway PostgreSQL, sample changes, open gateway
//	gateway [serve]             run the gateway (the default)
//	gateway migrate             install or upgrade the SQL and track GATEWAY_TRACK
//	gateway migrate --uninstall remove every object migrate created
//	gateway tail                follow the event stream, one line per event
//	gateway healthcheck         exit 0 when the gateway is ready (the image's HEALTHCHECK)
//	gateway config              print every setting
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	containerGC(os.Environ()) // see gcdefaults.go
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}
