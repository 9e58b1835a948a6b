package gateway

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uring sends to many sockets in one system call, through an io_uring.
//
// On the virtual machines we measured, a delivery is mostly its write(2),
// and most of a write(2) is entering and leaving the kernel, not TCP: a
// fan-out worker that hands the kernel its chunk of sockets in one
// io_uring_enter pays that once per chunk. A C probe on one of these
// 2-core machines (1,000 loopback sockets, 64-byte writes, paced) measured
// 6.3 microseconds of the sender's CPU per write(2) and 3.3 per send in
// batches (README, Performance).
//
// It does only what the fan-out needs: n sends of whole buffers, each
// with MSG_DONTWAIT, so a socket without room completes at once with
// EAGAIN instead of waiting in the kernel (its connection's own writer
// then takes over, as after a short write(2)). It is hand-written: no
// io_uring library is served by the module proxy we build from, and the
// part used is small (set up, fill, enter, reap).
//
// A ring is used by one goroutine at a time (see uringPool).
type uring struct {
	fd      int
	entries uint32
	ringMem []byte // the submission and completion rings (one mapping)
	sqeMem  []byte

	sqTail *uint32
	sqMask uint32
	sqes   []uringSQE
	cqHead *uint32
	cqTail *uint32
	cqMask uint32
	cqes   []uringCQE

	uringScratch
}

// The kernel's structures and constants (include/uapi/linux/io_uring.h).
type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	msgFlags    uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	_           uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringParams struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFd         uint32
	_            [3]uint32
	sqOff        struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, _ uint32
		_                                                           uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, _ uint32
		_                                                           uint64
	}
}

const (
	uringOpSend          = 26      // IORING_OP_SEND
	uringSetupSubmitAll  = 1 << 7  // IORING_SETUP_SUBMIT_ALL: a bad entry does not stop the rest
	uringFeatSingleMmap  = 1 << 0  // IORING_FEAT_SINGLE_MMAP
	uringFeatNativeWorks = 1 << 9  // IORING_FEAT_NATIVE_WORKERS: Linux 5.12, long after IORING_OP_SEND (5.6)
	uringEnterGetEvents  = 1 << 0  // IORING_ENTER_GETEVENTS
	uringOffSQRing       = 0       // IORING_OFF_SQ_RING
	uringOffSQEs         = 1 << 28 // IORING_OFF_SQES
	uringSendFlags       = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL
)

// newURing sets up a ring of the given number of entries. It fails where
// the kernel is too old or io_uring is refused (a seccomp profile, as in
// Docker's default since 25.0, or kernel.io_uring_disabled).
func newURing(entries uint32) (*uring, error) {
	p := uringParams{flags: uringSetupSubmitAll}
	fd, err := uringSetup(entries, &p)
	if errors.Is(err, syscall.EINVAL) {
		p = uringParams{} // before Linux 5.18: without SUBMIT_ALL (send retries what was not taken)
		fd, err = uringSetup(entries, &p)
	}
	if err != nil {
		return nil, fmt.Errorf("set up io_uring: %w", err)
	}
	r := &uring{fd: fd, entries: p.sqEntries}
	if p.features&uringFeatSingleMmap == 0 || p.features&uringFeatNativeWorks == 0 {
		r.close()
		return nil, errors.New("set up io_uring: kernel older than 5.12")
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	if r.ringMem, err = unix.Mmap(fd, uringOffSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, fmt.Errorf("map io_uring rings: %w", err)
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMem, err = unix.Mmap(fd, uringOffSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, fmt.Errorf("map io_uring entries: %w", err)
	}
	base := unsafe.Pointer(&r.ringMem[0])
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Add(base, off)) }
	r.sqTail = u32(p.sqOff.tail)
	r.sqMask = *u32(p.sqOff.ringMask)
	r.cqHead = u32(p.cqOff.head)
	r.cqTail = u32(p.cqOff.tail)
	r.cqMask = *u32(p.cqOff.ringMask)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	// Entry i of the submission ring is always sqes[i]: the array (an
	// indirection the fan-out has no use for) is the identity.
	array := unsafe.Slice((*uint32)(unsafe.Add(base, p.sqOff.array)), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	return r, nil
}

func uringSetup(entries uint32, p *uringParams) (int, error) {
	fd, _, errno := syscall.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

func (r *uring) close() {
	if r.sqeMem != nil {
		_ = unix.Munmap(r.sqeMem)
	}
	if r.ringMem != nil {
		_ = unix.Munmap(r.ringMem)
	}
	_ = syscall.Close(r.fd)
}

// send sends bufs[i] to socket fds[i], for each i, without waiting for
// room, and sets res[i] to what send(2) would have returned: the bytes
// taken, or minus the error number (-EAGAIN: the socket was full). The
// caller must keep every descriptor open until send returns; n is at most
// the ring's entries. After an error, a send without an answer has
// uringNoAnswer (it may or may not have been made) and the ring must be
// dropped.
func (r *uring) send(fds []int32, bufs [][]byte, res []int32) error {
	n := uint32(len(fds))
	if n > r.entries {
		return fmt.Errorf("send %d buffers through a ring of %d", n, r.entries)
	}
	tail := atomic.LoadUint32(r.sqTail)
	for i := range n {
		b := bufs[i]
		r.sqes[(tail+i)&r.sqMask] = uringSQE{opcode: uringOpSend, fd: fds[i],
			addr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))), len: uint32(len(b)),
			msgFlags: uringSendFlags, userData: uint64(i)}
	}
	atomic.StoreUint32(r.sqTail, tail+n) // the kernel reads the entries after it sees the tail
	for i := range res[:n] {
		res[i] = uringNoAnswer
	}
	// Submit without waiting. The sends complete during the call (none
	// of them waits for room), so their answers are in the completion
	// ring when it returns. A raw call, as for writeNoPark: it never
	// sleeps, and the Go scheduler need not take the processor from it.
	var submitted uint32
	for try := 0; submitted < n; try++ {
		k, _, errno := syscall.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n-submitted), 0, 0, 0, 0)
		switch {
		case errno == 0 && k > 0:
			submitted += uint32(k)
		case try >= 100:
			return fmt.Errorf("submit to io_uring: %d of %d taken (%v)", submitted, n, errno)
		case errno != 0 && errno != syscall.EINTR && errno != syscall.EAGAIN:
			return fmt.Errorf("submit to io_uring: %w", errno)
		}
		// Nothing taken: interrupted, or the kernel was short of memory
		// for a moment; bounded, so that it cannot spin.
	}
	got := r.reap(res)
	for got < n {
		// Some were not done in the call (the kernel handed them to a
		// worker): wait for them, as a call that may sleep.
		_, _, errno := syscall.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, uintptr(n-got), uringEnterGetEvents, 0, 0)
		if errno != 0 && errno != syscall.EINTR {
			return fmt.Errorf("wait for io_uring: %w", errno)
		}
		got += r.reap(res)
	}
	runtime.KeepAlive(bufs) // the kernel read them through addresses the collector cannot see
	return nil
}

// reap takes the completions waiting in the ring.
func (r *uring) reap(res []int32) uint32 {
	head, tail := atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail)
	var got uint32
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		if c.userData < uint64(len(res)) {
			res[c.userData] = c.res
			got++
		}
	}
	atomic.StoreUint32(r.cqHead, head)
	return got
}

// uringPool lends rings to fan-out workers. Rings are made on demand, up
// to limit (beyond it a worker writes as it would without io_uring), and
// live as long as the process: a few kilobytes each, and at most a few per
// CPU.
var uringPool struct {
	mu   sync.Mutex
	free []*uring
	made int
	err  error // the kernel refused: never ask again
}

// uringLimit bounds the rings made: every server in the process shares
// them (tests run several).
var uringLimit = 4 * runtime.GOMAXPROCS(0)

// getURing lends a ring, or nil when none can be had.
func getURing() *uring {
	p := &uringPool
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		r := p.free[n-1]
		p.free = p.free[:n-1]
		return r
	}
	if p.err != nil || p.made >= uringLimit {
		return nil
	}
	r, err := newURing(fanChunk)
	if err != nil {
		p.err = err
		return nil
	}
	p.made++
	return r
}

func putURing(r *uring) {
	p := &uringPool
	p.mu.Lock()
	p.free = append(p.free, r)
	p.mu.Unlock()
}

// dropURing closes a ring whose state is unknown after a failed send.
func dropURing(r *uring) {
	r.close()
	p := &uringPool
	p.mu.Lock()
	p.made--
	p.mu.Unlock()
}

// uringUsable reports whether this process can send through io_uring, and
// why not when it cannot.
func uringUsable() error {
	r := getURing()
	if r != nil {
		putURing(r)
		return nil
	}
	p := &uringPool
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	return nil // all lent: it works
}
