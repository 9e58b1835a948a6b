package gateway

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/json"
	"sync"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// entry is an event with its wire forms, encoded once and shared by every
// connection that receives it.
type entry struct {
	notify.Event
	frame []byte // the JSON object: a WebSocket text frame's payload, and SSE data
	wire  []byte // frame as a whole WebSocket frame, header included

	// wire compressed (permessage-deflate, no context takeover), built by
	// the first connection that negotiated compression and shared by all.
	zOnce sync.Once
	zwire []byte
	sse   []byte // the whole SSE block (id, event, data lines)

	// The row's top-level values in canonical form, decoded on first use:
	// only events some subscription or visibility rule looks into pay for it.
	colsOnce sync.Once
	cols     map[string]string
}

// column returns the canonical value of the row's column name.
func (e *entry) column(name string) (string, bool) {
	e.colsOnce.Do(func() {
		var row map[string]json.RawMessage
		if json.Unmarshal(e.Data, &row) != nil {
			return
		}
		e.cols = make(map[string]string, len(row))
		for k, raw := range row {
			if v, ok := canonical(raw); ok {
				e.cols[k] = v
			}
		}
	})
	v, ok := e.cols[name]
	return v, ok
}

// timeLayout is ISO-8601 in UTC with microseconds, as the app's frames have.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// wsHeadroom is room left before a frame's JSON for its WebSocket header,
// so that the whole frame is one slice, built once: a server's frames are
// not masked, so every connection sends the very same bytes. 10 bytes is
// the largest header (a 64-bit length).
const wsHeadroom = 10

func newEntry(ev notify.Event) *entry {
	e := &entry{Event: ev}
	id := ev.Pos.String()
	b := make([]byte, wsHeadroom, wsHeadroom+len(ev.Data)+len(ev.Type)*2+96)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","type":`...)
	b = notify.AppendJSONString(b, ev.Type)
	b = append(b, `,"event":`...)
	b = notify.AppendJSONString(b, ev.Type)
	b = append(b, `,"data":`...)
	b = append(b, ev.Data...)
	if ev.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	b = append(b, `,"timestamp":"`...)
	b = ev.Time.UTC().AppendFormat(b, timeLayout)
	b = append(b, `"}`...)
	e.wire = framed(b)
	e.frame = b[wsHeadroom:]
	e.sse = sseBlock(id, ev.Type, e.frame)
	return e
}

// deflated returns the event's frame compressed for a connection that
// negotiated permessage-deflate: the same bytes for every such connection,
// since no compression context carries over from one message to the next.
// When compressing does not make it smaller, it is the plain frame (a
// message may always go uncompressed).
func (e *entry) deflated() []byte {
	e.zOnce.Do(func() { e.zwire = deflateFrame(e.frame, e.wire) })
	return e.zwire
}

var flaters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.BestSpeed) // the level is valid: no error
	return w
}}

// deflateTail ends every flushed deflate stream; RFC 7692 (7.2.1) has the
// sender leave it out.
var deflateTail = []byte{0, 0, 0xff, 0xff}

func deflateFrame(payload, plain []byte) []byte {
	buf := bytes.NewBuffer(make([]byte, wsHeadroom, wsHeadroom+len(payload)/2+32))
	w := flaters.Get().(*flate.Writer)
	w.Reset(buf)
	_, werr := w.Write(payload)
	ferr := w.Flush()
	flaters.Put(w)
	b := buf.Bytes()
	if werr != nil || ferr != nil || !bytes.HasSuffix(b, deflateTail) || len(b)-len(deflateTail) >= len(plain) {
		return plain
	}
	f := framed(b[:len(b)-len(deflateTail)])
	f[0] |= 0x40 // RSV1: the message is compressed
	return f
}

// newFrame makes an entry of one of the transport's own frames (pong,
// ping, subscribed, ...), which has no position.
func newFrame(frame []byte) *entry {
	b := append(make([]byte, wsHeadroom, wsHeadroom+len(frame)), frame...)
	return &entry{frame: b[wsHeadroom:], wire: framed(b)}
}

// framed writes the WebSocket header of the text frame whose payload is
// b[wsHeadroom:] into the room before it, and returns the whole frame.
func framed(b []byte) []byte {
	var h [wsHeadroom]byte
	hdr := appendHeader(h[:0], len(b)-wsHeadroom)
	start := wsHeadroom - len(hdr)
	copy(b[start:], hdr)
	return b[start:]
}

// appendHeader appends the header of an unmasked, final text frame of n
// bytes (RFC 6455, section 5.2).
func appendHeader(b []byte, n int) []byte {
	b = append(b, 0x81) // FIN, opcode 1 (text)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// sseBlock formats one SSE message. data never holds a newline: it is
// compact JSON, whose strings escape newlines.
func sseBlock(id, event string, data []byte) []byte {
	b := make([]byte, 0, len(data)+len(id)+len(event)+24)
	b = append(b, "id: "...)
	b = append(b, id...)
	b = append(b, "\nevent: "...)
	b = append(b, event...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}

// controlFrame builds a frame of the gateway's own (reset, connected, pong,
// ...) in the same envelope as events. id is omitted when empty.
func controlFrame(typ, id string, data any, now time.Time) []byte {
	d, err := json.Marshal(data)
	if err != nil {
		d = []byte("{}") // data is always one of our own small maps
	}
	b := make([]byte, 0, len(d)+96)
	b = append(b, '{')
	if id != "" {
		b = append(b, `"id":`...)
		b = notify.AppendJSONString(b, id)
		b = append(b, ',')
	}
	b = append(b, `"type":`...)
	b = notify.AppendJSONString(b, typ)
	b = append(b, `,"event":`...)
	b = notify.AppendJSONString(b, typ)
	b = append(b, `,"data":`...)
	b = append(b, d...)
	b = append(b, `,"timestamp":"`...)
	b = now.UTC().AppendFormat(b, timeLayout)
	return append(b, `"}`...)
}
