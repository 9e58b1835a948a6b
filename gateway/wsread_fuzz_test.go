package gateway

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// filterStream writes stream into a corkConn that filters its reads, and
// returns what gorilla would read and the control frames taken out.
func filterStream(t *testing.T, stream []byte) (passed []byte, ctl [][]byte) {
	t.Helper()
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		_, _ = client.Write(stream)
		client.Close()
	}()
	c := &corkConn{Conn: server, fd: -1}
	c.rd.ctl = func(op byte, payload []byte) {
		ctl = append(ctl, append([]byte{op}, payload...))
	}
	var out bytes.Buffer
	buf := make([]byte, 7) // small reads, as gorilla's may be
	for {
		n, err := c.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			break
		}
		if n == 0 {
			t.Fatal("Read returned 0 bytes and no error")
		}
	}
	return out.Bytes(), ctl
}

// Whatever a client sends, the filter neither panics nor invents bytes:
// gorilla gets at most what came in.
func FuzzFrameReaderBytes(f *testing.F) {
	f.Add([]byte{0x89, 0x80, 1, 2, 3, 4})
	f.Add(clientFrame(true, 1, []byte(`{"type":"ping"}`)))
	f.Add([]byte{0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, stream []byte) {
		passed, ctl := filterStream(t, stream)
		taken := 0
		for _, p := range ctl {
			taken += 6 + len(p) - 1 // header, key, payload
		}
		if len(passed)+taken > len(stream) {
			t.Fatalf("%d bytes in, %d handed on and %d taken out", len(stream), len(passed), taken)
		}
	})
}

// A stream of frames comes out as the same frames without the valid ping
// and pong frames, whose payloads go to ctl unmasked, in order.
func FuzzFrameReaderFrames(f *testing.F) {
	f.Add([]byte{0, 9, 1, 10, 2, 8, 3, 1})
	f.Add([]byte{1, 200, 0x19, 5, 0x0a, 0})
	f.Fuzz(func(t *testing.T, spec []byte) {
		var stream, want []byte
		var wantCtl [][]byte
		for i := 0; i+1 < len(spec); i += 2 {
			op := spec[i] & 0x0f
			fin := spec[i]&0x10 == 0
			n := int(spec[i+1])
			if op >= 8 && n > 125 && spec[i]&0x20 == 0 {
				n = 125 // mostly valid control frames; some too long
			}
			payload := bytes.Repeat([]byte{byte(i)}, n)
			fr := clientFrame(fin, op, payload)
			stream = append(stream, fr...)
			if (op == opPing || op == opPong) && fin && n <= 125 {
				wantCtl = append(wantCtl, append([]byte{op}, payload...))
			} else {
				want = append(want, fr...)
			}
		}
		passed, ctl := filterStream(t, stream)
		if !bytes.Equal(passed, want) {
			t.Fatalf("handed on %d bytes, want %d (%x vs %x)", len(passed), len(want), passed, want)
		}
		if len(ctl) != len(wantCtl) {
			t.Fatalf("%d control frames taken out, want %d", len(ctl), len(wantCtl))
		}
		for i := range ctl {
			if !bytes.Equal(ctl[i], wantCtl[i]) {
				t.Fatalf("control frame %d: %x, want %x", i, ctl[i], wantCtl[i])
			}
		}
	})
}

// clientFrame is a client's (masked) frame.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	default:
		f = append(f, 0x80|126, 0, 0)
		binary.BigEndian.PutUint16(f[2:], uint16(n))
	}
	key := []byte{0x12, 0x34, 0x56, 0x78}
	f = append(f, key...)
	for i, c := range payload {
		f = append(f, c^key[i&3])
	}
	return f
}

var _ io.Reader = (*corkConn)(nil)
