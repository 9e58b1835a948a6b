package iouring

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring is one io_uring. It is used by one goroutine at a time.
type Ring struct {
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

// NoAnswer marks an operation the kernel has not answered: no send(2) or
// recv(2) returns it.
const NoAnswer = math.MinInt32

const (
	uringOpSend          = 26      // IORING_OP_SEND
	uringOpRecv          = 27      // IORING_OP_RECV
	uringSetupSubmitAll  = 1 << 7  // IORING_SETUP_SUBMIT_ALL: a bad entry does not stop the rest
	uringFeatSingleMmap  = 1 << 0  // IORING_FEAT_SINGLE_MMAP
	uringFeatNativeWorks = 1 << 9  // IORING_FEAT_NATIVE_WORKERS: Linux 5.12, long after IORING_OP_SEND (5.6)
	uringEnterGetEvents  = 1 << 0  // IORING_ENTER_GETEVENTS
	uringOffSQRing       = 0       // IORING_OFF_SQ_RING
	uringOffSQEs         = 1 << 28 // IORING_OFF_SQES
	uringSendFlags       = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL
	uringRecvFlags       = syscall.MSG_DONTWAIT
)

// New sets up a ring of the given number of entries. It fails where the
// kernel is too old or io_uring is refused (a seccomp profile, as in
// Docker's default since 25.0, or kernel.io_uring_disabled).
func New(entries uint32) (*Ring, error) {
	p := uringParams{flags: uringSetupSubmitAll}
	fd, err := uringSetup(entries, &p)
	if errors.Is(err, syscall.EINVAL) {
		p = uringParams{} // before Linux 5.18: without SUBMIT_ALL (submit retries what was not taken)
		fd, err = uringSetup(entries, &p)
	}
	if err != nil {
		return nil, fmt.Errorf("set up io_uring: %w", err)
	}
	r := &Ring{fd: fd, entries: p.sqEntries}
	if p.features&uringFeatSingleMmap == 0 || p.features&uringFeatNativeWorks == 0 {
		r.Close()
		return nil, errors.New("set up io_uring: kernel older than 5.12")
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	if r.ringMem, err = unix.Mmap(fd, uringOffSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.Close()
		return nil, fmt.Errorf("map io_uring rings: %w", err)
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMem, err = unix.Mmap(fd, uringOffSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.Close()
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
	// indirection neither user needs) is the identity.
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

// Entries is how many operations one call may make.
func (r *Ring) Entries() uint32 { return r.entries }

// Close releases the ring.
func (r *Ring) Close() {
	if r.sqeMem != nil {
		_ = unix.Munmap(r.sqeMem)
	}
	if r.ringMem != nil {
		_ = unix.Munmap(r.ringMem)
	}
	_ = syscall.Close(r.fd)
}

// Send sends bufs[i] to socket fds[i], for each i, without waiting for
// room, and sets res[i] to what send(2) would have returned: the bytes
// taken, or minus the error number (-EAGAIN: the socket was full). The
// caller must keep every descriptor open until Send returns; n is at most
// the ring's entries. After an error, a send without an answer has
// NoAnswer (it may or may not have been made) and the ring must be closed.
func (r *Ring) Send(fds []int32, bufs [][]byte, res []int32) error {
	return r.submit(uringOpSend, uringSendFlags, fds, bufs, res)
}

// Recv reads from socket fds[i] into bufs[i] (none of them empty), for
// each i, without waiting for data, and sets res[i] to what recv(2) would
// have returned: the bytes read, 0 at the end of the stream, or minus the
// error number (-EAGAIN: nothing to read). As for Send, the descriptors
// must stay open until it returns, and after an error the ring must be
// closed.
func (r *Ring) Recv(fds []int32, bufs [][]byte, res []int32) error {
	return r.submit(uringOpRecv, uringRecvFlags, fds, bufs, res)
}

func (r *Ring) submit(op uint8, flags uint32, fds []int32, bufs [][]byte, res []int32) error {
	n := uint32(len(fds))
	if n > r.entries {
		return fmt.Errorf("submit %d operations to a ring of %d", n, r.entries)
	}
	tail := atomic.LoadUint32(r.sqTail)
	for i := range n {
		b := bufs[i]
		r.sqes[(tail+i)&r.sqMask] = uringSQE{opcode: op, fd: fds[i],
			addr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))), len: uint32(len(b)),
			msgFlags: flags, userData: uint64(i)}
	}
	atomic.StoreUint32(r.sqTail, tail+n) // the kernel reads the entries after it sees the tail
	for i := range res[:n] {
		res[i] = NoAnswer
	}
	// Submit without waiting. The operations complete during the call
	// (none of them waits for room or data), so their answers are in the
	// completion ring when it returns. A raw call: it never sleeps, and
	// the Go scheduler need not take the processor from it (announcing it
	// only wakes the runtime's monitor, which takes the processor from a
	// system call that has lasted 20 µs).
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
	runtime.KeepAlive(bufs) // the kernel used them through addresses the collector cannot see
	return nil
}

// reap takes the completions waiting in the ring.
func (r *Ring) reap(res []int32) uint32 {
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
