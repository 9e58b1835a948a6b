// Package notify is the PostgreSQL side of the gateway: it installs the SQL,
// LISTENs for the commit doorbell, reads the event log in commit order and
// hands typed events on. It knows nothing of sockets.
package notify

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Position is where an event stands in the stream: the commit sequence of its
// transaction, then its id within the log. Positions of committed events are
// totally ordered in commit order and are the same on every replica.
type Position struct {
	Seq int64 // commit order of the transaction (rtgw.tx.seq)
	ID  int64 // order inside the transaction (rtgw.event.id)
}

// ErrBadPosition says a string is not a position the gateway could have issued.
var ErrBadPosition = errors.New("not an event id")

// ParsePosition parses the opaque id form "<seq>-<id>" that String returns.
func ParsePosition(s string) (Position, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok || len(s) > 41 {
		return Position{}, fmt.Errorf("%w: %q", ErrBadPosition, s)
	}
	seq, err1 := strconv.ParseInt(a, 10, 64)
	id, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || seq < 1 || id < 1 || strconv.FormatInt(seq, 10) != a || strconv.FormatInt(id, 10) != b {
		return Position{}, fmt.Errorf("%w: %q", ErrBadPosition, s)
	}
	return Position{Seq: seq, ID: id}, nil
}

// String gives the opaque id clients see and send back.
func (p Position) String() string {
	return strconv.FormatInt(p.Seq, 10) + "-" + strconv.FormatInt(p.ID, 10)
}

// Compare returns -1, 0 or +1 as p is before, equal to or after q.
func (p Position) Compare(q Position) int {
	switch {
	case p.Seq < q.Seq:
		return -1
	case p.Seq > q.Seq:
		return 1
	case p.ID < q.ID:
		return -1
	case p.ID > q.ID:
		return 1
	}
	return 0
}

// IsZero reports whether p is the position before any event.
func (p Position) IsZero() bool { return p == Position{} }

// Op is the kind of change.
type Op byte

// The kinds of change, as stored in rtgw.event.op.
const (
	Insert Op = 'I'
	Update Op = 'U'
	Delete Op = 'D'
)

// Event is one committed change of one row.
type Event struct {
	Pos       Position
	Table     string    // tracked table, as TableName gives it
	Op        Op        //
	Type      string    // e.g. budget_fact_created
	Data      []byte    // compact JSON object: the row, or its key when Truncated
	Truncated bool      // the row was larger than the limit; Data holds only its key
	Time      time.Time // commit time
}

// TableName is how events name a table: schema-qualified, as the capture
// trigger records it, except for tables in the public schema, which go by
// their bare name ("facts", "audit.entries").
func TableName(s string) string { return strings.TrimPrefix(s, "public.") }

// LogValue keeps log lines short: the row itself is not logged.
func (e Event) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", e.Pos.String()), slog.String("type", e.Type))
}
