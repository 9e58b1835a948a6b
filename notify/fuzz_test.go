package notify

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// Last-Event-ID and ?last_event_id= reach ParsePosition straight from
// clients: it must never panic, and what it accepts must round-trip.
func FuzzParsePosition(f *testing.F) {
	for _, s := range []string{"1-1", "42-9001", "0-1", "-1-2", "01-2", "1-", "", "9223372036854775807-1", "1-2-3", "１-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePosition(s)
		if err != nil {
			return
		}
		if p.Seq < 1 || p.ID < 1 {
			t.Fatalf("ParsePosition(%q) accepted %v", s, p)
		}
		if p.String() != s {
			t.Fatalf("ParsePosition(%q) = %v, which prints as %q", s, p, p.String())
		}
	})
}

// Anything may NOTIFY on the gateway's channel. parsePayload accepts exactly
// the two forms the gateway sends (a commit sequence as PostgreSQL prints a
// bigint, a heartbeat as formatBeat writes it), and names why it refuses
// anything else.
func FuzzParsePayload(f *testing.F) {
	for _, s := range []string{"1", "42", "9223372036854775807", "9223372036854775808", "0", "-1", "007", "+5", "1.5", " 1", "1 ",
		"", "hello", "hb 00000000000000ab 1", "hb 00000000000000AB 1", "hb 0000000000000000 1", "hb 00000000000000ab 0",
		"hb ffffffffffffffff 9223372036854775807", "hb zz 1", "hb 00000000000000ab", "hb  1", strings.Repeat("9", 65), "１"} {
		f.Add(s, uint64(0xab), int64(1))
	}
	f.Add("", uint64(0), int64(0))
	f.Add("", uint64(1<<63), int64(-5))
	f.Fuzz(func(t *testing.T, s string, beat uint64, n int64) {
		p, kind := parsePayload(s)
		switch kind {
		case "":
			switch {
			case p.seq > 0 && p.beat == 0:
				if strconv.FormatInt(p.seq, 10) != s {
					t.Fatalf("parsePayload(%q) = sequence %d, which PostgreSQL prints otherwise", s, p.seq)
				}
			case p.seq == 0 && p.beat != 0 && p.n > 0:
				if formatBeat(p.beat, p.n) != s {
					t.Fatalf("parsePayload(%q) = heartbeat %x %d, which is sent as %q", s, p.beat, p.n, formatBeat(p.beat, p.n))
				}
			default:
				t.Fatalf("parsePayload(%q) = %+v: neither a sequence nor a heartbeat", s, p)
			}
		case BadNotifyEmpty, BadNotifyOversized, BadNotifyMalformed:
			if p != (payload{}) {
				t.Fatalf("parsePayload(%q) refused it as %s but returned %+v", s, kind, p)
			}
			if (kind == BadNotifyEmpty) != (s == "") || (kind == BadNotifyOversized) != (len(s) > maxPayload) {
				t.Fatalf("parsePayload(%q) (%d bytes) refused it as %s", s, len(s), kind)
			}
		default:
			t.Fatalf("parsePayload(%q): unknown kind %q", s, kind)
		}
		// What the gateway sends always comes back as sent.
		if n > 0 {
			if p, kind := parsePayload(strconv.FormatInt(n, 10)); kind != "" || p != (payload{seq: n}) {
				t.Fatalf("sequence %d parsed as %+v %q", n, p, kind)
			}
			if beat != 0 {
				if p, kind := parsePayload(formatBeat(beat, n)); kind != "" || p != (payload{beat: beat, n: n}) {
					t.Fatalf("heartbeat %x %d (%q) parsed as %+v %q", beat, n, formatBeat(beat, n), p, kind)
				}
			}
		}
	})
}

// decodeRow is the gateway's only reading of a log row, whatever is in it.
// It must accept exactly the rows an independent statement of the rules
// accepts, refuse the rest with the first broken rule's kind, and what it
// accepts must be safe in a frame: a compact JSON object equal to the row's,
// not sharing memory with the read buffer.
func FuzzDecodeRow(f *testing.F) {
	type seed struct {
		seq, id        int64
		table, op, typ string
		data           string
		micros         int64
		hasTime        bool
	}
	for _, s := range []seed{
		{1, 1, "public.facts", "I", "budget_fact_created", `{"id": 7, "amount": 1500, "fact_date": "2026-01-05"}`, 1767225600123456, true},
		{5, 9, `audit."Entries"`, "U", "fact_updated", `{"id": 1, "note": "\u2028<script>", "x": [1, {"y": null}]}`, 1, true},
		{5, 10, `"we""ird"."ta.ble"`, "D", "2fact_deleted", `{}`, 0, true},
		{1, 1, "public.facts", "I", "bad type", `{}`, 1, true},
		{1, 1, "public.facts", "I", "x\nevent: forged", `{}`, 1, true},
		{1, 1, "public.facts", "X", "a", `{}`, 1, true},
		{1, 1, "public.facts", "", "a", `{}`, 1, true},
		{1, 1, "Public.Facts", "I", "a", `{}`, 1, true},
		{1, 1, "a.b.c", "I", "a", `{}`, 1, true},
		{1, 1, `""`, "I", "a", `{}`, 1, true},
		{1, 1, "public.facts", "I", "a", `[1]`, 1, true},
		{1, 1, "public.facts", "I", "a", `null`, 1, true},
		{1, 1, "public.facts", "I", "a", ` {"a":1} `, 1, true},
		{1, 1, "public.facts", "I", "a", `{"a":1`, 1, true},
		{1, 1, "public.facts", "I", "a", "{\"a\":\"\xff\"}", 1, true},
		{1, 1, "public.facts", "I", "a", `{}`, 0, false},
		{0, 1, "public.facts", "I", "a", `{}`, 1, true},
		{1, -1, "public.facts", "I", "a", `{}`, 1, true},
		{1, 1, "public.facts", "I", strings.Repeat("t", 256), `{}`, 1, true},
	} {
		f.Add(s.seq, s.id, s.table, s.op, s.typ, []byte(s.data), s.micros, s.hasTime)
	}
	var buf bytes.Buffer
	f.Fuzz(func(t *testing.T, seq, id int64, table, op, typ string, data []byte, micros int64, hasTime bool) {
		r := row{Seq: seq, ID: id, Table: table, Op: op, Type: typ, Data: data}
		if hasTime {
			r.Time = time.UnixMicro(micros).In(time.FixedZone("x", 3600))
		}
		want := ruleBroken(r)
		e, err := decodeRow(r, &buf)
		if err != nil {
			re, ok := err.(*RowError)
			if !ok {
				t.Fatalf("error %v is not a *RowError", err)
			}
			if re.Kind != want || re.Pos != (Position{Seq: seq, ID: id}) || !strings.Contains(re.Error(), "bad "+re.Kind) {
				t.Fatalf("refused %+v as %+v, want kind %q", r, re, want)
			}
			if len(re.Table) > 100 {
				t.Fatalf("error carries %d bytes of table name", len(re.Table))
			}
			return
		}
		if want != "" {
			t.Fatalf("accepted %+v, which breaks the %s rule", r, want)
		}
		if e.Pos != (Position{Seq: seq, ID: id}) || e.Type != typ || e.Op != Op(op[0]) || e.Table != TableName(table) ||
			!e.Time.Equal(r.Time) || e.Time.Location() != time.UTC || e.Truncated {
			t.Fatalf("row %+v decoded as %+v", r, e)
		}
		// The data: one compact object, equal to the row's, in its own memory.
		var compact bytes.Buffer
		if err := json.Compact(&compact, e.Data); err != nil || !bytes.Equal(compact.Bytes(), e.Data) || e.Data[0] != '{' {
			t.Fatalf("data %q is not a compact JSON object", e.Data)
		}
		var a, b any
		da, db := json.NewDecoder(bytes.NewReader(data)), json.NewDecoder(bytes.NewReader(e.Data))
		da.UseNumber()
		db.UseNumber()
		if da.Decode(&a) != nil || db.Decode(&b) != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("data %q decoded as %q, a different value", data, e.Data)
		}
		kept := bytes.Clone(e.Data)
		for i := range data {
			data[i] = 'x' // pgx reuses the buffer for the next row
		}
		if !bytes.Equal(kept, e.Data) {
			t.Fatalf("decoded data shares memory with the row buffer")
		}
	})
}

// ruleBroken states the rules for a usable row independently of decodeRow,
// in its order, and returns the first one r breaks ("" for none).
func ruleBroken(r row) string {
	typeOK := len(r.Type) >= 1 && len(r.Type) <= MaxTypeLen
	for _, c := range r.Type {
		typeOK = typeOK && (c == '_' || unicode.IsDigit(c) || unicode.IsLetter(c)) && c < 0x80
	}
	data := bytes.TrimLeft(r.Data, " \t\r\n")
	switch {
	case r.Seq < 1 || r.ID < 1:
		return BadRowID
	case r.Time.IsZero():
		return BadRowTime
	case r.Op != "I" && r.Op != "U" && r.Op != "D":
		return BadRowOp
	case !typeOK:
		return BadRowType
	case !utf8.ValidString(r.Table) || len(r.Table) > maxTableLen || !regclassText(r.Table):
		return BadRowTable
	case r.Data == nil || !utf8.Valid(r.Data) || !json.Valid(r.Data) || data[0] != '{':
		return BadRowData
	}
	return ""
}

// regclassText reports whether s is how PostgreSQL prints a table's name:
// one or two identifiers joined by a dot, each bare (a lower-case ASCII
// letter or _, then those or digits) or double-quoted with quotes doubled.
func regclassText(s string) bool {
	for parts := 1; ; parts++ {
		if s == "" {
			return false
		}
		if s[0] == '"' {
			i, n := 1, 0
			for {
				if i >= len(s) {
					return false
				}
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						i, n = i+2, n+1
						continue
					}
					i++
					break
				}
				i, n = i+1, n+1
			}
			if n == 0 {
				return false
			}
			s = s[i:]
		} else {
			i := 0
			for i < len(s) && (s[i] == '_' || 'a' <= s[i] && s[i] <= 'z' || i > 0 && '0' <= s[i] && s[i] <= '9') {
				i++
			}
			if i == 0 {
				return false
			}
			s = s[i:]
		}
		switch {
		case s == "":
			return true
		case s[0] != '.' || parts == 2:
			return false
		}
		s = s[1:]
	}
}
