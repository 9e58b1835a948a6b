// Package iouring sends to and reads from many sockets in one system call,
// through a Linux io_uring: the gateway's fan-out sends a chunk of sockets
// their frames at once, and the load tool reads the sockets an epoll round
// found ready at once.
//
// On the virtual machines we measured, most of a write(2) or read(2) to a
// loopback socket is entering and leaving the kernel, not TCP: a C probe on
// one of these 2-core machines (1,000 loopback sockets, 64-byte writes,
// paced) measured 6.3 microseconds of the sender's CPU per write(2) and 3.3
// per send in batches (README, Performance).
//
// It does only what those two need: n sends or receives, each with
// MSG_DONTWAIT, so a socket without room (or without data) answers at once
// with EAGAIN instead of waiting in the kernel. It is hand-written: no
// io_uring library is served by the module proxy we build from, and the
// part used is small (set up, fill, enter, reap). Linux only; elsewhere New
// fails and callers use one system call per socket.
package iouring
