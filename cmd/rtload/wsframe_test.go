package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// frame builds a server frame (unmasked) with the length form its size
// calls for.
func frame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var f []byte
	switch n := len(payload); {
	case n < 126:
		f = []byte{b0, byte(n)}
	case n < 1<<16:
		f = binary.BigEndian.AppendUint16([]byte{b0, 126}, uint16(n))
	default:
		f = binary.BigEndian.AppendUint64([]byte{b0, 127}, uint64(n))
	}
	return append(f, payload...)
}

// stream of every kind of frame a gateway may send, and what reading it
// must give: messages in order, pings answered, the close ends it.
var (
	medium  = bytes.Repeat([]byte("m"), 300)
	large   = []byte(strings.Repeat("0123456789", 7_000)) // over the poller's 64 KiB read buffer
	allWire = bytes.Join([][]byte{
		frame(true, 1, []byte(`{"type":"connected"}`)),
		frame(true, 2, medium),
		frame(true, 1, large),
		frame(false, 1, []byte("he")),
		frame(true, 9, []byte("p1")), // a control frame between fragments
		frame(false, 0, []byte("ll")),
		frame(true, 0, []byte("o")),
		frame(true, 0xA, nil),
		frame(true, 1, nil),
		frame(true, 8, []byte{0x03, 0xe9}),
		frame(true, 1, []byte("after the close")),
	}, nil)
	allMsgs = []string{`{"type":"connected"}`, string(medium), string(large), "hello", ""}
)

// TestParserAnyChunking: however the bytes are split into reads, the
// parser gives the same messages and pings, and stops at the close.
func TestParserAnyChunking(t *testing.T) {
	for _, size := range []int{1, 2, 3, 7, 10, 125, 4096, 65536, len(allWire)} {
		var msgs, pings []string
		p := wsParser{
			msg:  func(b []byte) { msgs = append(msgs, string(b)) },
			ping: func(b []byte) { pings = append(pings, string(b)) },
		}
		var err error
		for b := allWire; len(b) > 0 && err == nil; {
			n := min(size, len(b))
			err, b = p.feed(b[:n]), b[n:]
		}
		if !errors.Is(err, errClosed) {
			t.Fatalf("chunks of %d: ended with %v, want errClosed", size, err)
		}
		if len(msgs) != len(allMsgs) {
			t.Fatalf("chunks of %d: %d messages, want %d", size, len(msgs), len(allMsgs))
		}
		for i := range msgs {
			if msgs[i] != allMsgs[i] {
				t.Fatalf("chunks of %d: message %d is %.40q (%d bytes), want %.40q (%d bytes)",
					size, i, msgs[i], len(msgs[i]), allMsgs[i], len(allMsgs[i]))
			}
		}
		if len(pings) != 1 || pings[0] != "p1" {
			t.Fatalf("chunks of %d: pings %q, want [p1]", size, pings)
		}
	}
}

// TestParserRefusesWhatNoServerSends: each malformed frame ends the
// stream with an error, whatever came before it was delivered.
func TestParserRefusesWhatNoServerSends(t *testing.T) {
	huge := binary.BigEndian.AppendUint64([]byte{0x81, 127}, maxMessage+1)
	for name, bad := range map[string][]byte{
		"masked":                   {0x81, 0x81, 1, 2, 3, 4, 'x'},
		"reserved bit":             {0xC1, 0x01, 'x'},
		"long control frame":       append([]byte{0x89, 126, 0, 126}, make([]byte, 126)...),
		"fragmented control frame": {0x09, 0x00},
		"continuation first":       {0x80, 0x01, 'x'},
		"message inside a message": {0x01, 0x01, 'a', 0x81, 0x01, 'b'},
		"unknown opcode":           {0x83, 0x00},
		"over the size limit":      huge,
	} {
		var msgs int
		p := wsParser{msg: func([]byte) { msgs++ }, ping: func([]byte) {}}
		err := p.feed(append(frame(true, 1, []byte("ok")), bad...))
		if err == nil || errors.Is(err, errClosed) {
			t.Errorf("%s: feed returned %v, want an error", name, err)
		}
		if msgs != 1 {
			t.Errorf("%s: %d messages delivered before it, want 1", name, msgs)
		}
	}
}

// TestParserStopsAtShut: a stream closed while its bytes are being
// parsed hands on nothing more (the loss test cuts a client after a set
// number of frames).
func TestParserStopsAtShut(t *testing.T) {
	var msgs int
	var p wsParser
	p.msg = func([]byte) {
		if msgs++; msgs == 2 {
			p.shut.Store(true)
		}
	}
	b := bytes.Repeat(frame(true, 1, []byte("x")), 5)
	if err := p.feed(b); err == nil || msgs != 2 {
		t.Fatalf("feed: %v after %d messages, want an error after 2", err, msgs)
	}
}

func TestPongFrameIsMasked(t *testing.T) {
	f := pongFrame([]byte("hello"))
	if f[0] != 0x8A || f[1] != 0x80|5 || len(f) != 11 {
		t.Fatalf("pong header % x, length %d", f[:2], len(f))
	}
	got := make([]byte, 5)
	for i := range got {
		got[i] = f[6+i] ^ f[2+i%4]
	}
	if string(got) != "hello" {
		t.Fatalf("unmasked payload %q, want hello", got)
	}
}
