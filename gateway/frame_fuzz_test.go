package gateway

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"io"
	"testing"
)

// readFrame splits a server frame (RFC 6455 5.2: unmasked) into its first
// byte and payload, or fails the test.
func readFrame(t *testing.T, f []byte) (byte, []byte) {
	t.Helper()
	if len(f) < 2 || f[1]&0x80 != 0 {
		t.Fatalf("frame % x: too short or masked", f[:min(len(f), 10)])
	}
	n, h := uint64(f[1]&0x7f), 2
	switch n {
	case 126:
		n, h = uint64(binary.BigEndian.Uint16(f[2:])), 4
		if n < 126 {
			t.Fatalf("16-bit length %d for a length that fits in 7 bits", n)
		}
	case 127:
		n, h = binary.BigEndian.Uint64(f[2:]), 10
		if n <= 0xffff {
			t.Fatalf("64-bit length %d for a length that fits in 16 bits", n)
		}
	}
	if uint64(len(f)-h) != n {
		t.Fatalf("header says %d bytes, frame holds %d", n, len(f)-h)
	}
	return f[0], f[h:]
}

// Every frame built once per event is one whole, final text frame holding
// the payload; its compressed form, when smaller, is the same with RSV1 set
// and a payload that inflates (RFC 7692: with the flush's tail put back) to
// the very same bytes.
func FuzzWireFrame(f *testing.F) {
	f.Add([]byte(`{"type":"pong"}`))
	f.Add(bytes.Repeat([]byte("abc"), 100))
	f.Add(bytes.Repeat([]byte{0}, 70000))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		e := newFrame(payload)
		b0, p := readFrame(t, e.wire)
		if b0 != 0x81 || !bytes.Equal(p, payload) || !bytes.Equal(e.frame, payload) {
			t.Fatalf("plain frame: first byte %#x, payload of %d bytes, want 0x81 and the %d bytes given", b0, len(p), len(payload))
		}
		z := deflateFrame(e.frame, e.wire)
		if bytes.Equal(z, e.wire) {
			return // no smaller: sent as it is
		}
		if len(z) >= len(e.wire) {
			t.Fatalf("compressed frame of %d bytes for a plain one of %d", len(z), len(e.wire))
		}
		b0, zp := readFrame(t, z)
		if b0 != 0xc1 {
			t.Fatalf("compressed frame's first byte %#x, want 0xc1 (FIN, RSV1, text)", b0)
		}
		r := flate.NewReader(io.MultiReader(bytes.NewReader(zp), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff})))
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("inflated %d bytes (%v), want the %d given", len(got), err, len(payload))
		}
	})
}
