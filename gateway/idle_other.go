//go:build !linux

package gateway

import "sync/atomic"

// idlePoller parks idle readers on Linux (idle_linux.go); elsewhere every
// connection keeps its reader.
type idlePoller struct {
	parkedN atomic.Int64 // always 0
}

var idle idlePoller

func (*idlePoller) usable() bool      { return false }
func (*idlePoller) park(*wsConn) bool { return false }
func (*idlePoller) forget(*wsConn)    {}

func (*idlePoller) readable(*corkConn) bool { return true }
