package gateway

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/budget-rt/gateway/notify"
)

// entry is an event with its wire forms, encoded once and shared by every
// connection that receives it.
type entry struct {
	notify.Event
	frame []byte // the JSON object: a WebSocket text frame, and SSE data
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

func newEntry(ev notify.Event) *entry {
	e := &entry{Event: ev}
	id := ev.Pos.String()
	b := make([]byte, 0, len(ev.Data)+len(ev.Type)*2+96)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","type":`...)
	b = appendString(b, ev.Type)
	b = append(b, `,"event":`...)
	b = appendString(b, ev.Type)
	b = append(b, `,"data":`...)
	b = append(b, ev.Data...)
	if ev.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	b = append(b, `,"timestamp":"`...)
	b = ev.Time.UTC().AppendFormat(b, timeLayout)
	b = append(b, `"}`...)
	e.frame = b
	e.sse = sseBlock(id, ev.Type, b)
	return e
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
		b = appendString(b, id)
		b = append(b, ',')
	}
	b = append(b, `"type":`...)
	b = appendString(b, typ)
	b = append(b, `,"event":`...)
	b = appendString(b, typ)
	b = append(b, `,"data":`...)
	b = append(b, d...)
	b = append(b, `,"timestamp":"`...)
	b = now.UTC().AppendFormat(b, timeLayout)
	return append(b, `"}`...)
}

func appendString(b []byte, s string) []byte {
	if safeASCII(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// safeASCII reports whether s needs no JSON escaping (the usual event name).
func safeASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
