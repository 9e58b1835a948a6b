package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"
	"unicode/utf8"
)

// row is one row of the event log as read (rtgw.tx joined with rtgw.event),
// before it is checked. The capture trigger only writes well-formed rows, but
// anyone with rights on the schema can write others, by hand or by a bug.
type row struct {
	Seq, ID int64
	Table   string    // rtgw.event.tbl: regclass text, "schema.table"
	Op      string    // rtgw.event.op
	Type    string    // rtgw.event.type
	Data    []byte    // rtgw.event.data as text; nil when NULL
	Time    time.Time // rtgw.tx.committed_at; zero when NULL or infinite
}

// Kinds of bad row: RowError.Kind, and the keys of Stats.BadRows.
const (
	BadRowID    = "id"    // seq or id below 1: "<seq>-<id>" would not be an id clients can resume from
	BadRowTime  = "time"  // no (finite) commit time: the long-poll pages by it
	BadRowOp    = "op"    // not I, U or D
	BadRowType  = "type"  // empty, longer than MaxTypeLen, or not only ASCII letters, digits and _
	BadRowTable = "table" // not a table name as PostgreSQL prints a regclass
	BadRowData  = "data"  // not a JSON object in UTF-8
)

// MaxTypeLen bounds an event type. A type is a tracked prefix and a suffix,
// with at most one column's value in it, so real ones are far shorter; the
// bound keeps a hand-written row from putting kilobytes into the two name
// fields of every frame.
const MaxTypeLen = 255

// maxTableLen is the longest a regclass prints: two 63-byte identifiers,
// quoted with every quote doubled.
const maxTableLen = 2*(2*63+2) + 1

// RowError says why a row of the event log was skipped.
type RowError struct {
	Pos    Position
	Table  string // as the row has it (clipped)
	Kind   string // BadRow*
	Detail string
}

func (e *RowError) Error() string {
	return fmt.Sprintf("event %d-%d of %q: bad %s: %s", e.Pos.Seq, e.Pos.ID, e.Table, e.Kind, e.Detail)
}

var (
	// An identifier as quote_ident prints it: bare when it is lower-case
	// letters, digits and _, else double-quoted with quotes doubled.
	tableRe = regexp.MustCompile(`^(?:(?:[a-z_][a-z0-9_]*|"(?:[^"]|"")+")\.)?(?:[a-z_][a-z0-9_]*|"(?:[^"]|"")+")$`)
)

// ValidType reports whether s can name an event: what rtgw.event_type can
// produce (the prefix's letters, digits and _, a column's value with
// everything else replaced by _, the suffix).
func ValidType(s string) bool {
	if s == "" || len(s) > MaxTypeLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// decodeRow checks a row and turns it into an event, or says with a
// *RowError why the gateway cannot use it. buf is scratch space. Whatever it
// accepts is safe to put in a frame as is: the type needs no escaping and
// cannot break an SSE line, the data is one compact JSON object in UTF-8.
func decodeRow(r row, buf *bytes.Buffer) (Event, error) {
	e := Event{Pos: Position{Seq: r.Seq, ID: r.ID}, Type: r.Type, Time: r.Time.UTC()}
	bad := func(kind, detail string, args ...any) (Event, error) {
		return Event{}, &RowError{Pos: e.Pos, Table: clip(r.Table), Kind: kind, Detail: fmt.Sprintf(detail, args...)}
	}
	switch {
	case r.Seq < 1 || r.ID < 1:
		return bad(BadRowID, "position %d-%d is not one the log issues", r.Seq, r.ID)
	case r.Time.IsZero():
		return bad(BadRowTime, "the transaction has no commit time")
	case len(r.Op) != 1 || (r.Op[0] != byte(Insert) && r.Op[0] != byte(Update) && r.Op[0] != byte(Delete)):
		return bad(BadRowOp, "op %q is not I, U or D", clip(r.Op))
	case !ValidType(r.Type):
		return bad(BadRowType, "type %q is not 1 to %d ASCII letters, digits and _", clip(r.Type), MaxTypeLen)
	case len(r.Table) > maxTableLen || !utf8.ValidString(r.Table) || !tableRe.MatchString(r.Table):
		return bad(BadRowTable, "not a table name")
	}
	e.Op = Op(r.Op[0])
	e.Table = TableName(r.Table)
	if r.Data == nil {
		return bad(BadRowData, "data is NULL")
	}
	if !utf8.Valid(r.Data) {
		return bad(BadRowData, "data is not UTF-8")
	}
	buf.Reset()
	if err := json.Compact(buf, r.Data); err != nil {
		return bad(BadRowData, "data is not JSON: %v", err)
	}
	if b := buf.Bytes(); b[0] != '{' {
		// Its kind only: a row's values do not belong in logs.
		return bad(BadRowData, "data is a JSON %s, not an object", jsonKind(b[0]))
	}
	e.Data = bytes.Clone(buf.Bytes())
	return e, nil
}

// jsonKind names the kind of JSON value that starts with c.
func jsonKind(c byte) string {
	switch c {
	case '[':
		return "array"
	case '"':
		return "string"
	case 'n':
		return "null"
	case 't', 'f':
		return "boolean"
	}
	return "number"
}

// clip keeps what bad input puts in a log line short.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s... (%d bytes)", s[:n], len(s))
}

// tally counts bad input by kind. The first of each kind is logged as a
// warning with its context and the rest at debug level: a stream of garbage
// costs one line per kind, not one per item, and the counts say how much.
type tally struct {
	mu     sync.Mutex
	counts map[string]uint64
}

func (t *tally) add(logger *slog.Logger, msg, kind string, attrs ...any) {
	t.mu.Lock()
	if t.counts == nil {
		t.counts = map[string]uint64{}
	}
	t.counts[kind]++
	first := t.counts[kind] == 1
	t.mu.Unlock()
	if logger == nil {
		logger = slog.Default()
	}
	level := slog.LevelDebug
	attrs = append([]any{"kind", kind}, attrs...)
	if first {
		level = slog.LevelWarn
		attrs = append(attrs, "note", "first of its kind: the rest are only counted (and logged at debug level)")
	}
	logger.Log(context.Background(), level, msg, attrs...)
}

// snapshot returns a copy of the counts.
func (t *tally) snapshot() map[string]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]uint64, len(t.counts))
	for k, v := range t.counts {
		out[k] = v
	}
	return out
}
