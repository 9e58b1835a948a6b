package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"
)

// run phases, for the report.
type phases struct {
	pid                                      int
	before, half, connected, writeStart, end procSample
	halfConns                                int // clients connected when half was sampled
	procErr                                  error
	toolStart, toolEnd                       time.Duration
	ringReadsStart, ringReadsEnd             int64 // the WebSocket readers' io_uring calls
	writeStartAt, endAt                      time.Time
	restartAt                                int32 // clock time the restart command started, 0: none
	restartErr                               error
	loadStart, loadEnd                       string
	gwStart, gwEnd                           gwSample // the gateway's /metrics
}

// load connects the clients, runs the writer, waits for the deliveries
// and builds the report.
func load(ctx context.Context, logger *slog.Logger, o options) (*report, error) {
	pool, err := openDB(ctx, o)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	head, err := waitReady(ctx, o.url)
	if err != nil {
		return nil, err
	}

	var ph phases
	pid, err := gatewayPID(o)
	if err == nil {
		ph.before, err = sampleProc(pid)
	}
	if err != nil {
		ph.procErr = err
		logger.Warn("no gateway CPU and memory figures", "err", err)
	}

	clk := clock{start: time.Now()}
	marker := newMarker(runID())
	sc := &scanner{marker: []byte(marker)}
	var prog progress
	clients, err := newClients(o, clk, sc, &prog)
	if err != nil {
		return nil, err
	}

	// Connect every client before the first commit: each must then
	// receive every row.
	cctx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	var (
		refused   atomic.Int64
		failed    atomic.Int64
		connected []*client
		mu        sync.Mutex
		following sync.WaitGroup
		sem       = make(chan struct{}, o.parallel)
		opening   sync.WaitGroup
		firstErr  error
	)
	connectStart := time.Now()
	// The clients connect in two halves, the gateway's memory sampled
	// between them: what the second half added is the cost of a
	// connection, without what a fresh gateway grows once, however many
	// connect (it weighs most in a run of few clients).
	openAll := func(clients []*client) {
		for _, c := range clients {
			sem <- struct{}{}
			opening.Go(func() {
				defer func() { <-sem }()
				octx, cancel := context.WithTimeout(cctx, 30*time.Second)
				s, err := c.connect(octx, head)
				cancel()
				if err != nil {
					if errors.Is(err, errRefused) {
						refused.Add(1)
					} else {
						failed.Add(1)
					}
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
					return
				}
				mu.Lock()
				connected = append(connected, c)
				mu.Unlock()
				following.Go(func() { c.follow(cctx, s) })
			})
		}
		opening.Wait()
	}
	half := len(clients) / 2
	openAll(clients[:half])
	if ph.procErr == nil && half > 0 {
		ph.half, ph.procErr = sampleProc(pid)
		ph.halfConns = len(connected)
	}
	openAll(clients[half:])
	connectWall := time.Since(connectStart)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if len(connected) == 0 {
		hint := ""
		if errors.Is(firstErr, errRefused) {
			hint = refusedHint
		}
		return nil, fmt.Errorf("no client could connect: %w%s", firstErr, hint)
	}
	if firstErr != nil {
		logger.Warn("some clients could not connect", "refused", refused.Load(), "failed", failed.Load(), "first_err", firstErr)
	}
	if ph.procErr == nil {
		ph.connected, ph.procErr = sampleProc(pid)
	}

	w := &writer{pool: pool, logger: logger, marker: marker, rate: o.rate, batch: o.rowsPerCommit,
		conns: o.writers, clock: clk}
	ph.writeStartAt = time.Now()
	ph.loadStart = loadAvg()
	ph.gwStart = scrapeGateway(ctx, metricsURL(o))
	ph.toolStart = selfCPU()
	ph.ringReadsStart = ringReads.Load()
	if ph.procErr == nil {
		ph.writeStart, ph.procErr = sampleProc(pid)
	}
	restarted := make(chan struct{})
	if o.restartCmd != "" {
		go func() {
			defer close(restarted)
			select {
			case <-ctx.Done():
				return
			case <-time.After(o.restartAt):
			}
			ph.restartAt = clk.now()
			logger.Info("restarting the gateway", "cmd", o.restartCmd)
			cmd := exec.CommandContext(ctx, "sh", "-c", o.restartCmd)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			ph.restartErr = cmd.Run()
		}()
	} else {
		close(restarted)
	}
	w.run(ctx, o.duration)
	<-restarted
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	// Drain: wait until every client holds every committed row, or the
	// grace period is over; what is missing then is lost.
	committed, err := w.committed(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	var rows int64
	for _, ok := range committed {
		if ok {
			rows++
		}
	}
	want := rows * int64(len(connected))
	deadline := time.Now().Add(o.grace)
	for prog.distinct.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	ph.endAt = time.Now()
	ph.loadEnd = loadAvg()
	ph.gwEnd = scrapeGateway(ctx, metricsURL(o))
	ph.toolEnd = selfCPU()
	ph.ringReadsEnd = ringReads.Load()
	if ph.procErr == nil {
		if pid2, err := gatewayPID(o); o.pid == 0 && err == nil && pid2 != pid {
			pid = pid2 // restarted: memory is the new process's, CPU is unknown
		}
		ph.end, ph.procErr = sampleProc(pid)
	}
	ph.pid = pid
	stopClients()
	following.Wait()

	return newReport(o, ph, w, committed, rows, connected, len(clients), refused.Load(), failed.Load(), connectWall, clk), nil
}

// newClients builds the clients, spread round-robin over the sources.
func newClients(o options, clk clock, sc *scanner, prog *progress) ([]*client, error) {
	srcs := sources(o.sources)
	if len(srcs) == 0 {
		srcs = []*net.TCPAddr{nil}
	}
	// One HTTP transport per source address for SSE: its pool is what
	// keeps the source address.
	sseBy := map[*net.TCPAddr]*sseTransport{}
	out := make([]*client, 0, o.ws+o.sse)
	ttl := o.duration + o.grace + time.Hour
	for i := range o.ws + o.sse {
		src := srcs[i%len(srcs)]
		token := ""
		if o.secret != "" {
			var err error
			if token, err = mintToken(o.secret, i+1, ttl); err != nil {
				return nil, err
			}
		}
		var tr transport
		if i < o.ws {
			ws, err := newWSTransport(o.url, token, o.batch, src)
			if err != nil {
				return nil, err
			}
			tr = ws
		} else {
			base, ok := sseBy[src]
			if !ok {
				base = newSSETransport(o.url, "", o.batch, src)
				sseBy[src] = base
			}
			t := *base
			t.token = token
			tr = &t
		}
		if o.wrap != nil {
			tr = o.wrap(i, tr)
		}
		out = append(out, &client{index: i, tr: tr, clock: clk, scan: sc, prog: prog, backoff: o.backoff})
	}
	return out, nil
}
