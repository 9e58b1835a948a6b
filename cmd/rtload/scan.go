package main

import (
	"bytes"
)

// The scanner reads only what the count needs from a frame, without
// decoding it: the tool shares the machine with the gateway, and a full
// json.Unmarshal per delivery would make the tool, not the server, the
// bottleneck. It relies on the gateway's fixed field order (gateway/frame.go):
//
//	{"id":"12-34","type":"budget_fact_created","event":...,"data":{...},"timestamp":"..."}
//
// A batched frame (?batch=1) is a JSON array of such objects.
var (
	evStart   = []byte(`{"id":"`)
	typeField = []byte(`","type":"`)
	created   = []byte(`_created`)
	resetType = []byte(`reset`)
)

// event is what the scanner found in one event object. Its slices point
// into the frame and are valid until the next read.
type event struct {
	id    []byte
	reset bool  // a reset frame: id is the head to resume from
	row   int64 // the writer's index of the row, -1 when not one of ours
}

// scanner finds the tool's rows by the marker the writer puts in their
// description ("rtl<run>.<index>").
type scanner struct {
	marker []byte
}

// each calls fn for every event object in a frame, a single object or an
// array of them. Frames without an id (connected, ping, pong) have none.
//
// Inside an event, `{"id":"` cannot occur in a string (its quotes would be
// escaped), so it marks the start of the next event of an array, unless a
// row holds a nested object with a string "id"; the tables the tool writes
// to have none.
func (s *scanner) each(frame []byte, fn func(event)) {
	array := len(frame) > 0 && frame[0] == '['
	b := frame
	for {
		i := bytes.Index(b, evStart)
		if i < 0 {
			return
		}
		b = b[i+len(evStart):]
		j := bytes.IndexByte(b, '"')
		if j < 0 {
			return
		}
		ev := event{id: b[:j], row: -1}
		b = b[j:]
		if !bytes.HasPrefix(b, typeField) {
			continue
		}
		b = b[len(typeField):]
		k := bytes.IndexByte(b, '"')
		if k < 0 {
			return
		}
		typ := b[:k]
		b = b[k:]
		seg := b
		if array {
			if end := bytes.Index(b, evStart); end >= 0 {
				seg = b[:end]
			}
		}
		switch {
		case bytes.Equal(typ, resetType):
			ev.reset = true
		case bytes.HasSuffix(typ, created):
			ev.row = s.row(seg)
		}
		fn(ev)
		if !array {
			return
		}
		b = b[len(seg):]
	}
}

// row reads the index after the marker, -1 when seg has none.
func (s *scanner) row(seg []byte) int64 {
	i := bytes.Index(seg, s.marker)
	if i < 0 {
		return -1
	}
	var n int64
	digits := 0
	for _, c := range seg[i+len(s.marker):] {
		if c < '0' || c > '9' || digits > 15 {
			break
		}
		n = n*10 + int64(c-'0')
		digits++
	}
	if digits == 0 {
		return -1
	}
	return n
}
