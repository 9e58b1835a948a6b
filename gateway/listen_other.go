//go:build !linux

package gateway

import "syscall"

// reusePortControl is nil: only Linux's SO_REUSEPORT hands new connections
// to every listener on the address; elsewhere the option means something
// else, so GATEWAY_REUSE_PORT is refused.
var reusePortControl func(network, address string, c syscall.RawConn) error
