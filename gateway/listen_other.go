//go:build !linux

package gateway

import "syscall"

// reusePortControl is nil: SO_REUSEPORT balances connections between
// listeners only on Linux (elsewhere the last one to bind takes them all).
var reusePortControl func(network, address string, c syscall.RawConn) error
