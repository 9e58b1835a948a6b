package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/olahol/melody"

	"github.com/budget-rt/gateway/notify"
)

// Benchmarks of the delivery hot paths. The socket benchmarks run the
// server in this process and the clients in a child process (this test
// binary again, see TestWSBenchClient), so that the CPU time and memory
// they report are the server's alone, and each process has its own 20,000
// open files. Each runs our transport and, in the same run, a bare melody
// server (Broadcast of each frame) as the baseline: the machine is shared
// and noisy, so only ratios within one run mean much. Run:
//
//	go test ./gateway -run '^$' -bench 'FanOut|IdleConn' -benchtime 2000x -count 3
//	go test ./gateway -run '^$' -bench 'Encode|ReplayLookup' -count 3
//
// RTGW_BENCH_CONNS (comma-separated) changes the numbers of sockets;
// RTGW_BENCH_AHEAD and RTGW_BENCH_STRIDE the pace (see benchAhead).

// benchEventData is a row of the example facts table, as the log carries it.
var benchEventData = []byte(`{"id":7,"amount":1500,"fact_date":"2026-01-05","description":"bread","article_id":4,"record_type":"fact","tab_origin_id":null}`)

func benchEvent(seq int64) notify.Event {
	return notify.Event{Pos: notify.Position{Seq: seq, ID: seq}, Table: "facts", Op: notify.Insert, Type: "budget_fact_created",
		Data: benchEventData, Time: time.Now()}
}

// BenchmarkEncodeEvent measures building an event's wire forms, once per
// event for every socket and transport.
func BenchmarkEncodeEvent(b *testing.B) {
	b.ReportAllocs()
	ev := benchEvent(812)
	for b.Loop() {
		_ = newEntry(ev)
	}
}

// BenchmarkReplayLookup measures finding a resume position in a full
// window of 10,000 events (find), and a whole resume from the window
// (attach: lookup, the copy of the 100 events after it, and writing them
// to a discarding emitter).
func BenchmarkReplayLookup(b *testing.B) {
	const window = 10000
	h := NewHub(slog.New(slog.DiscardHandler), nil, window, nil)
	evs := make([]notify.Event, window)
	for i := range evs {
		evs[i] = benchEvent(int64(i + 1))
	}
	h.Load(nil, notify.Position{}, true)
	h.Publish(evs)
	b.Run("find", func(b *testing.B) {
		b.ReportAllocs()
		rng := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			p := notify.Position{Seq: rng.Int64N(window) + 1}
			p.ID = p.Seq
			if _, ok := h.ring.find(p); !ok {
				b.Fatal("position not found")
			}
		}
	})
	b.Run("attach", func(b *testing.B) {
		b.ReportAllocs()
		last := notify.Position{Seq: window - 100, ID: window - 100}.String()
		ctx := context.Background()
		for b.Loop() {
			c := newClient(discardSink{}, 256, &Subscription{ID: DefaultSubscription}, nil)
			if err := h.Attach(ctx, c, last, notify.Position{}, discardEmitter{}); err != nil {
				b.Fatal(err)
			}
			h.Detach(c)
		}
	})
}

type discardSink struct{}

func (discardSink) send(*entry) bool  { return true }
func (discardSink) close(int, string) {}

type discardEmitter struct{}

func (discardEmitter) event(*entry) error                  { return nil }
func (discardEmitter) reset(string, notify.Position) error { return nil }

// benchConns returns the numbers of sockets to run with: RTGW_BENCH_CONNS,
// else def.
func benchConns(def ...int) []int {
	s := os.Getenv("RTGW_BENCH_CONNS")
	if s == "" {
		return def
	}
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// benchServer is a WebSocket server under test, listening on loopback.
type benchServer struct {
	url     string                   // ws://.../ without a query
	publish func(evs []notify.Event) // one event after another, in order
	conns   func() int               // connections the server still holds
	ours    *Server                  // nil for melody
}

// benchServers are the implementations each socket benchmark compares.
var benchServers = []struct {
	name  string
	start func(tb testing.TB) benchServer
}{{"ours", startOurs}, {"melody", startMelody}}

// startOurs serves the gateway's routes with its defaults, without
// authentication or limits on connection counts.
func startOurs(tb testing.TB) benchServer { return startOursWith(tb, func(*Options) {}) }

// startOursWith is startOurs with the options as set changes them.
func startOursWith(tb testing.TB, set func(*Options)) benchServer {
	opt := Options{Window: 10000, SendQueue: 256, WriteTimeout: 10 * time.Second,
		MaxMessageBytes: 4096, MessageRate: 2, MessageBurst: 20, HeaderTimeout: 10 * time.Second,
		HandshakeTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 32768}
	set(&opt)
	s := New(slog.New(slog.DiscardHandler), nil, nil, opt)
	s.Hub().Load(nil, notify.Position{}, true)
	srv := s.HTTPServer()
	url := serveBench(tb, srv)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
		_ = srv.Close()
	})
	return benchServer{url: url + "/api/v1/budget/ws", publish: s.Hub().Publish, conns: s.Hub().Len, ours: s}
}

// startMelody is the baseline: a bare melody server that broadcasts each
// event's frame (encoded once, as ours does), with melody's defaults but
// for a queue as long as ours.
func startMelody(tb testing.TB) benchServer {
	m := melody.New()
	m.Config.MessageBufferSize = 256 + controlMargin
	m.Config.MaxMessageSize = 4096
	hello := controlFrame("connected", "", map[string]any{"user_id": 0}, time.Now())
	m.HandleConnect(func(s *melody.Session) { _ = s.Write(hello) })
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = m.HandleRequest(w, r) })}
	url := serveBench(tb, srv)
	tb.Cleanup(func() { _ = m.Close(); _ = srv.Close() })
	return benchServer{url: url + "/", conns: m.Len, publish: func(evs []notify.Event) {
		for _, ev := range evs {
			_ = m.Broadcast(newEntry(ev).frame)
		}
	}}
}

func serveBench(tb testing.TB, srv *http.Server) string {
	ln, err := Listen(context.Background(), "127.0.0.1:0", false) // melody's too: the same sockets for both
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	return "ws://" + ln.Addr().String()
}

// BenchmarkFanOut publishes events one at a time to N sockets, each
// reading in a child process, and reports per delivery (one event to one
// socket): wall time, this process's CPU time (user + system: the server's
// whole cost), and allocations. single is one event per frame (the
// default); batch is ?batch=1 (events already queued go out as one
// frame). The publisher stays at most benchAhead events ahead of the
// slowest socket, within every queue, so nothing is dropped or cut.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range benchConns(1000, 10000) {
		for _, impl := range benchServers {
			for _, mode := range []string{"single", "single-write", "batch", "deflate"} {
				if impl.name == "melody" && mode != "single" {
					continue // melody has one frame per message, and our benchmark melody no compression
				}
				b.Run(fmt.Sprintf("conns=%d/%s/%s", n, impl.name, mode), func(b *testing.B) {
					var srv benchServer
					switch mode {
					case "deflate":
						srv = startOursWith(b, func(o *Options) { o.Compression = true })
					case "single-write": // a write(2) per socket, as without io_uring
						srv = startOursWith(b, func(o *Options) { o.NoIOURing = true })
					default:
						srv = impl.start(b)
					}
					q := ""
					if mode == "batch" {
						q = "?batch=1"
					}
					child := startBenchClients(b, srv.url+q, n, mode == "deflate")
					fanOut(b, srv, child, n)
				})
			}
		}
	}
}

// benchAhead bounds how far the publisher runs ahead of the slowest
// socket, in events: under the send queue (256), so nobody lags. With
// RTGW_BENCH_AHEAD=1 and RTGW_BENCH_STRIDE=1 each event reaches every
// socket before the next is published: one frame per write, the cost of a
// quiet stream.
var benchAhead = benchEnvInt("RTGW_BENCH_AHEAD", 128)

func benchEnvInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func fanOut(b *testing.B, srv benchServer, child *benchClients, n int) {
	total := (b.N + benchStride - 1) / benchStride * benchStride
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0, user0 := cpuTime(b)
	ccpu0, cok := processCPU(b, child.cmd.Process.Pid)
	b.ResetTimer()
	acked := 0
	evs := make([]notify.Event, 1)
	for i := 1; i <= total; i++ {
		for i-acked > benchAhead {
			acked = child.ack(b)
		}
		evs[0] = benchEvent(int64(i))
		srv.publish(evs)
	}
	for acked < total {
		acked = child.ack(b)
	}
	b.StopTimer()
	cpu1, user1 := cpuTime(b)
	cpu, user := cpu1-cpu0, user1-user0
	ccpu1, _ := processCPU(b, child.cmd.Process.Pid)
	runtime.ReadMemStats(&ms1)
	d := float64(total) * float64(n)
	if cok {
		b.ReportMetric(float64((ccpu1-ccpu0).Nanoseconds())/d, "client-cpu-ns/delivery")
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/d, "ns/delivery")
	b.ReportMetric(float64(cpu.Nanoseconds())/d, "cpu-ns/delivery")
	b.ReportMetric(float64(user.Nanoseconds())/d, "user-ns/delivery")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/d, "allocs/delivery")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/d, "B/delivery")
}

// cpuTime is this process's CPU time so far, user and system, and of it
// the user time: the gateway's own code, apart from the system calls that
// dominate the total.
func cpuTime(tb testing.TB) (total, user time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), time.Duration(ru.Utime.Nano())
}

// BenchmarkHandshake opens N WebSockets at once from a child process and
// reports the server's CPU time per connection, from starting the child
// until every socket has its first frame: the gateway's share of a
// reconnect storm (accept, HTTP request, upgrade, connected frame; and
// starting the child, a little and the same for every server). Each
// iteration opens N new sockets, closes them, and waits until the server
// has let go of them, so that no iteration pays for the last one's
// closing.
func BenchmarkHandshake(b *testing.B) {
	for _, n := range benchConns(1000) {
		for _, impl := range benchServers {
			b.Run(fmt.Sprintf("conns=%d/%s", n, impl.name), func(b *testing.B) {
				srv := impl.start(b)
				var cpu time.Duration
				for range b.N {
					cpu0, _ := cpuTime(b)
					child := startBenchClients(b, srv.url, n, false)
					cpu1, _ := cpuTime(b)
					cpu += cpu1 - cpu0
					child.close(b)
					// No signal says the server is done closing: poll, a
					// bounded while.
					for i := 0; srv.conns() > 0; i++ {
						if i == 10000 {
							b.Fatalf("the server still holds %d connections 10 s after the clients closed", srv.conns())
						}
						time.Sleep(time.Millisecond)
					}
				}
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*n), "cpu-ns/handshake")
			})
		}
	}
}

// BenchmarkIdleConn opens N WebSockets that receive nothing after their
// first frame and reports the server's memory per connection: the growth
// of heap and goroutine stacks in use, measured after a GC, divided by N;
// and its goroutines per connection. Run it with -benchtime 1x.
func BenchmarkIdleConn(b *testing.B) {
	for _, n := range benchConns(1000, 10000) {
		for _, impl := range benchServers {
			b.Run(fmt.Sprintf("conns=%d/%s", n, impl.name), func(b *testing.B) {
				srv := impl.start(b)
				heap0, stack0 := memInUse()
				g0 := runtime.NumGoroutine()
				child := startBenchClients(b, srv.url, n, false)
				// The handshakes' goroutines may still be ending: wait (a
				// bounded while) until the count stops falling.
				prev := runtime.NumGoroutine()
				for range 100 {
					time.Sleep(20 * time.Millisecond)
					g := runtime.NumGoroutine()
					if g == prev {
						break
					}
					prev = g
				}
				heap1, stack1 := memInUse()
				g1 := runtime.NumGoroutine()
				for range b.N {
				}
				b.ReportMetric(float64(heap1-heap0+stack1-stack0)/float64(n), "B/conn")
				b.ReportMetric(float64(heap1-heap0)/float64(n), "heap-B/conn")
				b.ReportMetric(float64(stack1-stack0)/float64(n), "stack-B/conn")
				b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/conn")
				child.close(b)
			})
		}
	}
}

// memInUse returns the heap and stack bytes in use after a full GC.
func memInUse() (heap, stack int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse), int64(ms.StackInuse)
}
