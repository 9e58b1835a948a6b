//go:build unix && !linux

package gateway

import "syscall"

// writeNoPark is write(2) through the syscall package: the raw call is
// Linux only (rawsyscall_linux.go).
func writeNoPark(fd uintptr, b []byte) (int, error) { return syscall.Write(int(fd), b) }
