package gateway

import (
	"encoding/binary"
	"io"
)

// The reading side of corkConn. gorilla reads a client's frames through
// Read, which hands it data and close frames only, each read ending at the
// frame's end; ping and pong frames are taken out of the stream here and
// answered (see wsTransport.answerControl). gorilla processes control frames
// only while it waits for a data message, and a read error there is
// final: a connection whose client sends nothing but pongs would keep a
// reader blocked inside gorilla, with the deep stack that takes. With them
// taken out, and reads that stop at a frame's end, the reader knows when
// gorilla holds nothing: between two messages, with nothing to read, an
// idle connection can give up its goroutine (see idlePoller).
type frameReader struct {
	head    [maxFrameHeader]byte // a data or close frame's header, for gorilla
	headLen uint8
	headOff uint8
	left    uint64 // the payload of the frame being handed over, still to read
	err     error  // the stream broke while the reader looked ahead
	// ctl answers a ping or notes a pong (op, the unmasked payload).
	ctl func(op byte, payload []byte)
}

// maxFrameHeader: 2 bytes, a 64-bit length, a masking key.
const maxFrameHeader = 2 + 8 + 4

const (
	opPing = 0x9
	opPong = 0xA
)

// Read gives gorilla the stream without ping and pong frames, never past
// the end of the frame it is in.
func (c *corkConn) Read(p []byte) (int, error) {
	r := &c.rd
	if r.ctl == nil {
		return c.Conn.Read(p) // not filtering (the handshake, or a test's raw socket)
	}
	for {
		if r.headOff < r.headLen {
			n := copy(p, r.head[r.headOff:r.headLen])
			r.headOff += uint8(n)
			return n, nil
		}
		if r.left > 0 {
			if uint64(len(p)) > r.left {
				p = p[:r.left]
			}
			n, err := c.Conn.Read(p)
			r.left -= uint64(n)
			return n, err
		}
		if r.err != nil {
			return 0, r.err
		}
		if err := c.nextFrame(); err != nil {
			r.err = err
			return 0, err
		}
	}
}

// nextFrame reads the next frame's header, waiting for it as a read does.
// A frame gorilla must see is left for Read to hand over; a ping or pong
// is read whole and handed to ctl, and nextFrame returns with nothing for
// gorilla: its caller decides whether to wait for more (Read) or to look
// first (between, which parks an idle reader; had nextFrame waited here
// for the frame after a pong, the reader of a client that sends nothing
// but its keepalive pongs would never park again). A control frame gorilla
// would refuse (too long, fragmented, unmasked, reserved bits) is handed
// over, so that it refuses it as before.
func (c *corkConn) nextFrame() error {
	r := &c.rd
	var h [maxFrameHeader]byte
	if _, err := io.ReadFull(c.Conn, h[:2]); err != nil {
		return err
	}
	n := 2 + 4*int(h[1]>>7)
	switch h[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if _, err := io.ReadFull(c.Conn, h[2:n]); err != nil {
		return err
	}
	var plen uint64
	switch h[1] & 0x7f {
	case 126:
		plen = uint64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		plen = binary.BigEndian.Uint64(h[2:])
	default:
		plen = uint64(h[1] & 0x7f)
	}
	op := h[0] & 0x0f
	ours := (op == opPing || op == opPong) && h[0]&0xf0 == 0x80 && h[1]&0x80 != 0 && plen <= 125
	if !ours {
		r.head, r.headLen, r.headOff, r.left = h, uint8(n), 0, plen
		return nil
	}
	var payload [125]byte
	b := payload[:plen]
	if _, err := io.ReadFull(c.Conn, b); err != nil {
		return err
	}
	key := h[n-4 : n]
	for i := range b {
		b[i] ^= key[i&3]
	}
	r.ctl(op, b)
	return nil
}

// between reports whether a message waits to be read, taking the ping and
// pong frames that arrived before it; false means nothing is there to
// read now, between two frames. It must be called only between gorilla's
// messages (gorilla then holds nothing: Read never hands it more than the
// frame it reads). A broken or ended stream counts as something to read:
// gorilla's read then fails with it.
func (c *corkConn) between() bool {
	r := &c.rd
	for {
		if r.headLen > r.headOff || r.err != nil {
			return true
		}
		if !idle.readable(c) {
			return false
		}
		if err := c.nextFrame(); err != nil {
			r.err = err
			return true
		}
	}
}
