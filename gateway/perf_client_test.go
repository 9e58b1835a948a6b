package gateway

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The socket benchmarks' clients run in a child process: this test binary
// again, running TestWSBenchClient with RTGW_BENCH_CLIENT="<url> <n>". It
// opens n WebSockets, says "ready" on stdout once each has its first
// frame, then counts the events every socket receives (one per frame, or
// several in a batched frame) and says "ack <k>" each time every socket has
// received the first k events (k a multiple of benchStride). It exits when
// its stdin closes.
const benchClientEnv = "RTGW_BENCH_CLIENT"

// benchDeflateEnv makes the client process offer permessage-deflate.
const benchDeflateEnv = "RTGW_BENCH_DEFLATE"

// benchStride is the granularity of the clients' acknowledgements
// (RTGW_BENCH_STRIDE; the child inherits it).
var benchStride = benchEnvInt("RTGW_BENCH_STRIDE", 16)

// benchClients is the parent's handle on the child.
type benchClients struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	ready  chan struct{}
	acks   chan int
	exited chan error
}

func startBenchClients(tb testing.TB, url string, n int, deflate bool) *benchClients {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestWSBenchClient$", "-test.bench=^$", "-test.count=1")
	cmd.Env = append(os.Environ(), benchClientEnv+"="+url+" "+strconv.Itoa(n))
	if deflate {
		cmd.Env = append(cmd.Env, benchDeflateEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start the client process: %v", err)
	}
	c := &benchClients{cmd: cmd, stdin: stdin, ready: make(chan struct{}), acks: make(chan int, 1<<16), exited: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "ready":
				close(c.ready)
			case strings.HasPrefix(line, "ack "):
				k, _ := strconv.Atoi(strings.TrimPrefix(line, "ack "))
				c.acks <- k
			case strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "---") || strings.HasPrefix(line, "    "):
				fmt.Fprintln(os.Stderr, "client process:", line)
			}
		}
		c.exited <- cmd.Wait()
	}()
	tb.Cleanup(func() { c.close(tb) })
	select {
	case <-c.ready:
	case err := <-c.exited:
		c.exited <- err
		tb.Fatalf("client process ended before its sockets were ready: %v", err)
	case <-time.After(3 * time.Minute):
		tb.Fatalf("client process: %d sockets not ready after 3 minutes", n)
	}
	return c
}

// ack waits for the next acknowledgement and returns the newest one.
func (c *benchClients) ack(tb testing.TB) int {
	var k int
	select {
	case k = <-c.acks:
	case err := <-c.exited:
		c.exited <- err
		tb.Fatalf("client process ended: %v", err)
	case <-time.After(time.Minute):
		tb.Fatal("no delivery acknowledged for a minute")
	}
	for {
		select {
		case k = <-c.acks:
		default:
			return k
		}
	}
}

// close ends the child (closing its sockets) and waits for it, at most a
// while.
func (c *benchClients) close(tb testing.TB) {
	if c.stdin == nil {
		return
	}
	_ = c.stdin.Close()
	c.stdin = nil
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		tb.Log("client process killed: it did not end within 30 s of its stdin closing")
	}
}

// TestWSBenchClient is the benchmarks' client process; it skips unless
// they run it.
func TestWSBenchClient(t *testing.T) {
	spec := os.Getenv(benchClientEnv)
	if spec == "" {
		t.Skip("the socket benchmarks' client process: they run it")
	}
	raw, ns, _ := strings.Cut(spec, " ")
	n, err := strconv.Atoi(ns)
	if err != nil {
		t.Fatalf("bad %s: %q", benchClientEnv, spec)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	acks := &benchAcks{n: int32(n), slots: make([]atomic.Int32, 1<<20), complete: make([]bool, 1<<20)}
	conns := make([]*benchConn, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialBench(u, i)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("open %d sockets: %v", n, err)
	}
	for _, c := range conns {
		go c.count(acks)
	}
	go acks.watch(conns)
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.conn.Close()
	}
}

// benchAcks tracks which strides of events every socket has received.
type benchAcks struct {
	n     int32
	slots []atomic.Int32 // sockets that received stride k

	mu       sync.Mutex
	complete []bool
	front    int // strides before it are complete
}

func (a *benchAcks) got(stride int) {
	if stride >= len(a.slots) || a.slots[stride].Add(1) != a.n {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.complete[stride] = true
	moved := false
	for a.front < len(a.complete) && a.complete[a.front] {
		a.front++
		moved = true
	}
	if moved {
		fmt.Printf("ack %d\n", a.front*benchStride)
	}
}

// benchConn is one client socket, read without a WebSocket library: the
// frames the server sends are unmasked and unfragmented, and reading them
// by hand keeps the client cheap.
type benchConn struct {
	got  atomic.Int64 // events received
	err  atomic.Value // why it stopped reading
	conn net.Conn
	br   *bufio.Reader
	buf  []byte

	zipped bool          // the last frame is compressed (permessage-deflate)
	zr     io.ReadCloser // inflates it
	zbuf   bytes.Buffer
}

// inflate decompresses a permessage-deflate payload (RFC 7692: the sender
// left out the flush's empty block, which the reader appends).
func (c *benchConn) inflate(p []byte) ([]byte, error) {
	src := io.MultiReader(bytes.NewReader(p), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff}))
	if c.zr == nil {
		c.zr = flate.NewReader(src)
	} else if err := c.zr.(flate.Resetter).Reset(src, nil); err != nil {
		return nil, err
	}
	c.zbuf.Reset()
	if _, err := c.zbuf.ReadFrom(c.zr); err != nil {
		return nil, err
	}
	return c.zbuf.Bytes(), nil
}

// dialBench opens socket i, spreading the sockets over several loopback
// source addresses, and reads the server's first frame.
func dialBench(u *url.URL, i int) (*benchConn, error) {
	d := net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	if os.Getenv(benchDeflateEnv) != "" {
		req += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
	}
	req += "\r\n"
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send the upgrade: %w", err)
	}
	c := &benchConn{conn: conn, br: bufio.NewReaderSize(conn, 4096)}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read the upgrade answer: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("upgrade answered %s", resp.Status)
	}
	if _, _, err := c.frame(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("read the first frame: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

// frame reads one frame: its opcode and payload (valid until the next).
func (c *benchConn) frame() (byte, []byte, error) {
	var h [8]byte
	if _, err := io.ReadFull(c.br, h[:2]); err != nil {
		return 0, nil, err
	}
	op, n := h[0]&0x0f, uint64(h[1]&0x7f)
	if h[0]&0x80 == 0 || h[1]&0x80 != 0 {
		return 0, nil, errors.New("fragmented or masked frame")
	}
	c.zipped = h[0]&0x40 != 0
	switch n {
	case 126:
		if _, err := io.ReadFull(c.br, h[:2]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(h[:2]))
	case 127:
		if _, err := io.ReadFull(c.br, h[:8]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(h[:8])
	}
	if uint64(cap(c.buf)) < n {
		c.buf = make([]byte, n)
	}
	c.buf = c.buf[:n]
	_, err := io.ReadFull(c.br, c.buf)
	return op, c.buf, err
}

var eventPrefix = []byte(`{"id":"`)

// count reads until the socket ends, counting events.
func (c *benchConn) count(a *benchAcks) {
	got := 0
	for {
		op, p, err := c.frame()
		if err != nil || op == 8 {
			c.err.Store(fmt.Sprintf("op %d, %v", op, err))
			return
		}
		if op == 9 {
			c.pong(p) // else the server closes the socket a minute after it opened
			continue
		}
		if op != 1 {
			continue
		}
		if c.zipped {
			if p, err = c.inflate(p); err != nil {
				c.err.Store(fmt.Sprintf("inflate: %v", err))
				return
			}
		}
		k := 0
		switch {
		case len(p) > 0 && p[0] == '[':
			k = bytes.Count(p, eventPrefix)
		case bytes.HasPrefix(p, eventPrefix):
			k = 1
		}
		c.got.Add(int64(k))
		for range k {
			got++
			if got%benchStride == 0 {
				a.got(got/benchStride - 1)
			}
		}
	}
}

// watch says on stderr, when no stride completes for 10 s while events
// arrive, where the sockets stand: a benchmark that stalls says why.
func (a *benchAcks) watch(conns []*benchConn) {
	last := -1
	for range time.Tick(10 * time.Second) {
		a.mu.Lock()
		front := a.front
		a.mu.Unlock()
		if front != last {
			last = front
			continue
		}
		lo, hi, dead := int64(-1), int64(0), 0
		var why any
		for _, c := range conns {
			g := c.got.Load()
			if lo < 0 || g < lo {
				lo = g
			}
			hi = max(hi, g)
			if w := c.err.Load(); w != nil {
				dead++
				why = w
			}
		}
		fmt.Fprintf(os.Stderr, "client process: stalled at %d events: sockets got %d-%d, %d stopped (%v)\n", front*benchStride, lo, hi, dead, why)
	}
}

// pong answers a control ping. Client frames are masked; a zero key leaves
// the payload as it is.
func (c *benchConn) pong(payload []byte) {
	b := append([]byte{0x8a, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
	_, _ = c.conn.Write(b)
}
