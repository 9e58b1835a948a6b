// Command rtload puts load on a running gateway and measures it: WebSocket
// and SSE clients spread over loopback source addresses, a writer that
// commits real rows into facts at a given rate, and a report of delivery
// latency (commit to receipt), delivered / lost / duplicated rows per
// client, connect times, and the CPU and memory the gateway and the tool
// itself spent. See the README's "Performance" section.
//
//	rtload -url http://127.0.0.1:8080 -db "$DATABASE_URL" -ws 1000 -rate 100 -duration 30s
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rtload:", err)
		os.Exit(1)
	}
}
