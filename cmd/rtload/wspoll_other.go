//go:build !linux

package main

import "net"

// Elsewhere each WebSocket stream is read by a goroutine of its own
// (connStream); see wspoll_linux.go.
const pollAvailable = false

func newPollStream(*net.TCPConn, []byte) (stream, error) { panic("unreachable: no epoll here") }
