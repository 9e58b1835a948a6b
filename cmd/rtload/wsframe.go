package main

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// The tool reads the gateway's WebSocket frames itself rather than through
// gorilla's reader: on the shared cores every microsecond the tool spends
// per delivery is taken from the gateway it measures. A server's frames
// are unmasked and the gateway never compresses for a client that did not
// ask, so reading one is a header and a slice.

// maxMessage bounds one message, as the gorilla reader's limit did.
const maxMessage = 64 << 20

// errClosed ends a stream whose gateway sent a close frame.
var errClosed = errors.New("the gateway closed the websocket")

// wsParser turns the bytes of one connection, as they are read, into
// messages. It is not safe for concurrent use.
type wsParser struct {
	msg  func(payload []byte) // a complete text or binary message, valid until the next feed
	ping func(payload []byte) // a ping's payload, to be answered with a pong

	pend   []byte // an incomplete frame carried over to the next feed
	frag   []byte // the payload of a fragmented message so far
	inFrag bool

	// shut is set by the stream's close, from any goroutine: no message
	// is handed on after it, even one already read.
	shut atomic.Bool
}

// feed parses b, the bytes just read. It returns errClosed after a close
// frame and an error for a frame no server may send; either ends the
// stream.
func (p *wsParser) feed(b []byte) error {
	carried := len(p.pend) > 0
	if carried {
		p.pend = append(p.pend, b...)
		b = p.pend
	}
	for {
		if p.shut.Load() {
			return net.ErrClosed
		}
		n, fin, op, payload, err := nextFrame(b)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		b = b[n:]
		switch op {
		case 0x1, 0x2: // text, binary
			if p.inFrag {
				return errors.New("websocket: a new message inside a fragmented one")
			}
			if fin {
				p.msg(payload)
			} else {
				p.frag, p.inFrag = append(p.frag[:0], payload...), true
			}
		case 0x0: // continuation
			if !p.inFrag {
				return errors.New("websocket: a continuation frame without a message")
			}
			if len(p.frag)+len(payload) > maxMessage {
				return fmt.Errorf("websocket: a message over %d bytes", maxMessage)
			}
			p.frag = append(p.frag, payload...)
			if fin {
				p.inFrag = false
				p.msg(p.frag)
			}
		case 0x8:
			return errClosed
		case 0x9:
			p.ping(payload)
		case 0xA: // an answer to a ping we never send
		default:
			return fmt.Errorf("websocket: unknown opcode %d", op)
		}
	}
	switch {
	case len(b) == 0:
		p.pend = p.pend[:0]
	case carried: // b is the tail of p.pend: move it to the front
		p.pend = p.pend[:copy(p.pend, b)]
	default:
		p.pend = append(p.pend[:0], b...)
	}
	if len(p.pend) == 0 && cap(p.pend) > 64<<10 {
		p.pend = nil // a large frame's buffer is not kept for every later one
	}
	return nil
}

// nextFrame reads the frame at the start of b: n is its length, 0 when b
// does not hold all of it yet.
func nextFrame(b []byte) (n int, fin bool, op byte, payload []byte, err error) {
	if len(b) < 2 {
		return 0, false, 0, nil, nil
	}
	fin, op = b[0]&0x80 != 0, b[0]&0x0f
	if b[0]&0x70 != 0 {
		return 0, false, 0, nil, errors.New("websocket: reserved bits set (no extension was negotiated)")
	}
	if b[1]&0x80 != 0 {
		return 0, false, 0, nil, errors.New("websocket: a masked frame from the server")
	}
	size, head := uint64(b[1]&0x7f), 2
	switch size {
	case 126:
		if len(b) < 4 {
			return 0, false, 0, nil, nil
		}
		size, head = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return 0, false, 0, nil, nil
		}
		size, head = binary.BigEndian.Uint64(b[2:]), 10
	}
	if op >= 0x8 && (size > 125 || !fin) {
		return 0, false, 0, nil, errors.New("websocket: a control frame longer than 125 bytes or fragmented")
	}
	if size > maxMessage {
		return 0, false, 0, nil, fmt.Errorf("websocket: a message over %d bytes", maxMessage)
	}
	if uint64(len(b)-head) < size {
		return 0, false, 0, nil, nil
	}
	n = head + int(size)
	return n, fin, op, b[head:n], nil
}

// pongFrame is the client's (masked) answer to a ping with payload.
func pongFrame(payload []byte) []byte {
	f := make([]byte, 6+len(payload))
	f[0], f[1] = 0x8A, 0x80|byte(len(payload))
	_, _ = rand.Read(f[2:6])
	for i, c := range payload {
		f[6+i] = c ^ f[2+i%4]
	}
	return f
}
