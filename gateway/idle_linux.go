package gateway

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// idlePoller holds the idle WebSocket connections: those whose reader
// found nothing to read between two messages. Such a connection has no
// goroutine: its socket waits in an epoll set (one-shot), and when it
// turns readable (a message, a pong, the end) a reader is started for it
// again. An idle connection thus costs no goroutine stack, which was 4 KiB
// of its 7-8 (gorilla's read path is deeper than a 2 KiB stack allows, so
// the stack of a reader waiting in it never shrinks).
//
// The epoll set is itself waited for through Go's network poller, so no
// thread sleeps in epoll_wait. One set serves the process (tests run
// several servers); it is made on first use and lives as long as the
// process.
type idlePoller struct {
	mu    sync.Mutex
	conns map[uint64]*wsConn // parked and parkable connections, by their key
	next  uint64
	ep    int
	file  *os.File // ep, waited for through the network poller; kept open for good
	err   error    // the poller could not be made: readers never park

	parkedN atomic.Int64 // connections parked now
	broken  atomic.Bool  // the set can no longer be waited for (fail)
}

var idle idlePoller

var idleOnce sync.Once

// start makes the epoll set and its goroutine.
func (p *idlePoller) start() {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		p.err = err
		return
	}
	// Non-blocking, so that os.NewFile hands it to the network poller.
	if err := syscall.SetNonblock(ep, true); err != nil {
		_ = unix.Close(ep)
		p.err = err
		return
	}
	f := os.NewFile(uintptr(ep), "rtgw-idle-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		p.err = err
		return
	}
	p.ep = ep
	p.file = f
	p.conns = make(map[uint64]*wsConn)
	go p.run(rc)
}

// run hands each socket that turned readable back to a reader. Should the
// set fail it returns, leaving the set open: a park racing with the
// failure may still call epoll_ctl on p.ep, which must not by then be the
// number of some other descriptor.
func (p *idlePoller) run(rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 128)
	for {
		var n int
		var werr error
		err := rc.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), events, 0)
			if errors.Is(werr, syscall.EINTR) {
				return false
			}
			return n != 0 || werr != nil
		})
		if err != nil || werr != nil {
			p.fail()
			return
		}
		for _, ev := range events[:n] {
			key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			c := p.conns[key]
			p.mu.Unlock()
			if c != nil {
				c.wake()
			}
		}
	}
}

// fail gives every parked connection its reader back and lets no reader
// park again: the set can no longer be waited for. It does not happen
// while the process runs; if it did, parked readers would never wake.
func (p *idlePoller) fail() {
	p.broken.Store(true)
	p.mu.Lock()
	parked := make([]*wsConn, 0, len(p.conns))
	for _, c := range p.conns {
		parked = append(parked, c)
	}
	p.mu.Unlock()
	for _, c := range parked {
		c.wake()
	}
}

// readable reports whether s has something to read (or has ended, or
// failed) now, without taking it and without waiting: recv(2) with
// MSG_PEEK|MSG_DONTWAIT, raw as the fan-out's writes are (writeNoPark).
func (*idlePoller) readable(s *corkConn) bool {
	if s.raw == nil {
		return true // no descriptor to look at: read the blocking way
	}
	ready := true
	err := s.raw.rc.Read(func(fd uintptr) bool {
		var one [1]byte
		for {
			_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&one[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			if errno != syscall.EINTR {
				ready = errno != syscall.EAGAIN
				return true // never wait: an idle reader parks instead
			}
		}
	})
	return ready || err != nil
}

// usable starts the poller on first use and reports whether readers may
// park.
func (p *idlePoller) usable() bool {
	idleOnce.Do(p.start)
	return p.err == nil && !p.broken.Load()
}

// park puts c's socket in the set, to be woken when it turns readable. It
// reports false when it could not (the socket is closed, say): the caller
// reads as before. c.parked is set first, so that a wake-up as soon as the
// socket is in the set finds it parked.
func (p *idlePoller) park(c *wsConn) bool {
	if c.sock.raw == nil {
		return false
	}
	if c.idleKey == 0 {
		p.mu.Lock()
		p.next++
		c.idleKey = p.next
		p.conns[c.idleKey] = c
		p.mu.Unlock()
	}
	op := unix.EPOLL_CTL_MOD
	if !c.inIdleSet {
		op = unix.EPOLL_CTL_ADD
	}
	// Everything the next reader reads is written before the mark: it may
	// start as soon as the socket is in the set.
	c.inIdleSet = true
	p.parkedN.Add(1) // wake takes it back
	c.parked.Store(true)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
		Fd: int32(uint32(c.idleKey)), Pad: int32(uint32(c.idleKey >> 32))}
	var cerr error
	// Through Control: the descriptor cannot be closed, and its number
	// reused by another socket, while it is being added.
	err := c.sock.raw.rc.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(p.ep, op, int(fd), &ev)
	})
	if err == nil && cerr == nil {
		if p.broken.Load() {
			c.wake() // fail may have missed it: read on
		}
		return true
	}
	// Not in the set: take the parked mark back, unless a close got it
	// first and started a reader, which now owns the connection (if that
	// reader parks, its modify fails and it reads on).
	if !c.parked.CompareAndSwap(true, false) {
		return true
	}
	p.parkedN.Add(-1)
	if op == unix.EPOLL_CTL_ADD {
		c.inIdleSet = false
	}
	return false
}

// forget drops c, which has ended. Its socket left the set when it was
// closed.
func (p *idlePoller) forget(c *wsConn) {
	if c.idleKey == 0 {
		return
	}
	p.mu.Lock()
	delete(p.conns, c.idleKey)
	p.mu.Unlock()
}
