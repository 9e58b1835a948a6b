package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/budget-rt/gateway/internal/iouring"
)

// On Linux the WebSocket streams are read by a few epoll loops, one per
// CPU, instead of a goroutine each. Go's reader costs two read(2) per
// delivery (the frame, then the one that finds the socket empty and parks
// the goroutine) and a wake-up through the scheduler; a loop reads each
// ready socket once, and 10,000 idle clients cost no scheduling at all.
// Each stream's socket is a duplicate of the dialled one: closing the
// net.Conn takes it out of Go's poller, the duplicate keeps it open.

const pollAvailable = true

type poller struct {
	epfd    int
	mu      sync.Mutex
	streams map[int32]*pollStream // by descriptor
}

var (
	pollersOnce sync.Once
	pollers     []*poller
	pollersErr  error
)

// startPollers starts the loops, once per process; they live as long as
// it does.
func startPollers() {
	for range runtime.GOMAXPROCS(0) {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			pollersErr = fmt.Errorf("create epoll: %w", err)
			return
		}
		p := &poller{epfd: epfd, streams: map[int32]*pollStream{}}
		pollers = append(pollers, p)
		go p.loop()
	}
}

func (p *poller) loop() {
	events := make([]unix.EpollEvent, 256)
	ready := make([]*pollStream, 0, len(events))
	buf := make([]byte, 64<<10)
	var rr *ringReader
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			// Only a bad descriptor or buffer can fail it: a bug, not load.
			panic(fmt.Sprintf("rtload: epoll_wait: %v", err))
		}
		ready = ready[:0]
		p.mu.Lock()
		for _, ev := range events[:n] {
			if s := p.streams[ev.Fd]; s != nil {
				ready = append(ready, s)
			}
		}
		p.mu.Unlock()
		useRing := readURing.Load()
		if useRing && rr == nil {
			rr = newRingReader() // nil where the kernel refuses
			useRing = rr != nil
		}
		if useRing {
			if err := rr.readAll(ready, buf); err != nil {
				rr.ring.Close() // its state is unknown; the next round makes another
				rr = nil
			}
		} else {
			for _, s := range ready {
				s.readable(buf)
			}
		}
		// Resting after a round that found few sockets ready lets the next
		// one find many: one epoll_wait and one wake-up for all of them
		// instead of each (the gateway writes sockets one by one, slower
		// than they are read, so without it every delivery costs a wake-up
		// on the cores the gateway shares).
		if d := time.Duration(readPause.Load()); d > 0 && n < len(events)/2 {
			time.Sleep(d)
		}
	}
}

// pollStream is one WebSocket read by a poller. Only the poller's loop
// reads fd and closes it once registered; close only shuts it down, which
// is safe from any goroutine while fd is open (closed tells).
type pollStream struct {
	p    *poller
	fd   int
	rest []byte // bytes that came with the handshake answer
	done chan error
	ps   wsParser

	mu     sync.Mutex
	closed bool
}

func newPollStream(conn *net.TCPConn, rest []byte) (stream, error) {
	pollersOnce.Do(startPollers)
	if pollersErr != nil {
		conn.Close()
		return nil, pollersErr
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("get socket: %w", err)
	}
	fd := -1
	if cerr := raw.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		err = cerr
	}
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("duplicate socket: %w", err)
	}
	s := &pollStream{p: pollers[fd%len(pollers)], fd: fd, rest: rest, done: make(chan error, 1)}
	s.ps.ping = s.pong
	return s, nil
}

func (s *pollStream) read(fn func([]byte)) error {
	s.ps.msg = fn
	if err := s.ps.feed(s.rest); err != nil {
		s.release()
		return err
	}
	s.rest = nil
	p := s.p
	p.mu.Lock()
	p.streams[int32(s.fd)] = s
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(s.fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		p.mu.Lock()
		delete(p.streams, int32(s.fd))
		p.mu.Unlock()
		s.release()
		return fmt.Errorf("watch socket: %w", err)
	}
	return <-s.done
}

// readable reads what the socket holds, in the poller's loop. Epoll is
// level-triggered: a read that did not fill buf emptied the socket, and
// anything arriving later is reported again.
func (s *pollStream) readable(buf []byte) {
	for {
		n, err := rawRead(s.fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			s.end(err)
			return
		case n == 0:
			s.end(io.EOF)
			return
		}
		if err := s.ps.feed(buf[:n]); err != nil {
			s.end(err)
			return
		}
		if n < len(buf) {
			return
		}
	}
}

// ringReader reads the sockets an epoll round found ready through an
// io_uring, up to ringReadEntries in one system call instead of a read(2)
// each: most of a read(2) of a loopback socket on the VMs we measure on is
// entering and leaving the kernel, and the tool shares the cores with the
// gateway it measures (the gateway sends the same way).
type ringReader struct {
	ring *iouring.Ring
	fds  [ringReadEntries]int32
	bufs [ringReadEntries][]byte
	res  [ringReadEntries]int32
}

const (
	ringReadEntries = 64
	// ringReadSlot is each socket's room in one call: a few frames; a
	// socket that filled it is read on at once with read(2).
	ringReadSlot = 4 << 10
)

// newRingReader makes a ring reader, or returns nil where the kernel
// refuses io_uring; it then turns readURing off, so that no loop asks
// again: the loops read(2) each socket, as before.
func newRingReader() *ringReader {
	r, err := iouring.New(ringReadEntries)
	if err != nil {
		readURing.Store(false)
		return nil
	}
	rr := &ringReader{ring: r}
	arena := make([]byte, ringReadEntries*ringReadSlot)
	for i := range rr.bufs {
		rr.bufs[i] = arena[i*ringReadSlot : (i+1)*ringReadSlot : (i+1)*ringReadSlot]
	}
	return rr
}

// readAll reads each ready socket once, as readable does, in calls of up
// to ringReadEntries sockets. Only the poller's loop closes a registered
// socket, so every descriptor stays open while the kernel has it. After
// the ring's own error it returns that error; the sockets it left
// unanswered end (their clients reconnect with their last ids), since a
// read may have been made whose bytes were never seen.
func (rr *ringReader) readAll(ready []*pollStream, buf []byte) error {
	for len(ready) > 0 {
		chunk := ready[:min(len(ready), ringReadEntries)]
		ready = ready[len(chunk):]
		for i, s := range chunk {
			rr.fds[i] = int32(s.fd)
		}
		err := rr.ring.Recv(rr.fds[:len(chunk)], rr.bufs[:len(chunk)], rr.res[:len(chunk)])
		ringReads.Add(1)
		for i, s := range chunk {
			switch n := rr.res[i]; {
			case n == iouring.NoAnswer:
				s.end(errRingLost)
			case n == 0:
				s.end(io.EOF)
			case n == -int32(syscall.EAGAIN) || n == -int32(syscall.EINTR):
				// Nothing after all: epoll reports it again when there is.
			case n < 0:
				s.end(syscall.Errno(-n))
			default:
				if ferr := s.ps.feed(rr.bufs[i][:n]); ferr != nil {
					s.end(ferr)
				} else if int(n) == ringReadSlot {
					s.readable(buf) // there may be more
				}
			}
		}
		if err != nil {
			for _, s := range ready {
				s.readable(buf)
			}
			return err
		}
	}
	return nil
}

var errRingLost = errors.New("io_uring failed before the read was answered")

// rawRead is read(2) without telling the Go scheduler, as the gateway
// writes (see its rawsyscall_linux.go): the descriptor is non-blocking, so
// the call never sleeps, and announcing it only wakes the runtime's monitor
// to take the processor from a read a busy machine stretched. buf is the
// loop's own buffer, never empty.
func rawRead(fd int, buf []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func (s *pollStream) pong(payload []byte) {
	// Non-blocking: a socket too full for 6-131 bytes is lost anyway, and
	// the gateway will cut it for the missing pong.
	_, _ = unix.Write(s.fd, pongFrame(payload))
}

// end takes the stream out of its poller and hands err to read.
func (s *pollStream) end(err error) {
	p := s.p
	p.mu.Lock()
	delete(p.streams, int32(s.fd))
	p.mu.Unlock()
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	s.release()
	s.done <- err
}

func (s *pollStream) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		_ = unix.Close(s.fd)
	}
}

// close makes the poller end the stream (its socket reports a hang-up).
func (s *pollStream) close() {
	s.ps.shut.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		_ = unix.Shutdown(s.fd, unix.SHUT_RDWR)
	}
}
