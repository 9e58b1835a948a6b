package gateway

import (
	"syscall"
	"unsafe"
)

// writeNoPark makes write(2) raw, without telling the Go scheduler: a
// write to a non-blocking socket never sleeps, and announcing it (what
// syscall.Write does) lets the runtime's monitor take the processor from a
// write that a busy virtual machine stretched past 20 microseconds and
// hand it to another thread, which the fan-out then has to get back.
// Deliveries are mostly these writes, so the monitor found one to take
// many times a second and never slept long (see README, Transport
// benchmarks). Linux only: where we measured it, and where a program may
// make system calls without libc.
func writeNoPark(fd uintptr, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(p), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
