//go:build unix && !linux

package gateway

import "syscall"

// writeNoPark is write(2) through the syscall package: the raw call is
// Linux only (rawsyscall_linux.go).
func writeNoPark(fd uintptr, b []byte) (int, error) { return syscall.Write(int(fd), b) }

// peekNoPark is recv(2) with MSG_PEEK|MSG_DONTWAIT through the syscall
// package.
func peekNoPark(fd uintptr, b []byte) (int, error) {
	n, _, err := syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return n, err
}
