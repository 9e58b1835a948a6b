package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/budget-rt/gateway/notify"
)

// A Subscription narrows a client's stream: an event matches when its type
// is one of Types (nil: any), its table one of Tables (nil: any), and every
// Where condition holds on its row. A client receives the union of its
// subscriptions, and only ever what its visibility allows.
type Subscription struct {
	ID     string
	Types  map[string]bool
	Tables map[string]bool
	Where  []Cond
}

// Cond is a column equality on the event's row: the column is present and
// its value, in canonical form (see canonical), equals Value.
type Cond struct {
	Column string
	Value  string
}

// Limits on what one client may ask for: a subscription is evaluated for
// every event the index hands the client, and each one costs the hub memory.
const (
	maxSubscriptions = 16  // per connection
	maxNames         = 64  // types or tables in one subscription
	maxConds         = 8   // where conditions in one subscription
	maxNameLen       = 128 // one type or table name
	maxValueLen      = 256 // one where value
	maxSubIDLen      = 64
)

// DefaultSubscription names the subscription a connection starts with (from
// its query parameters; everything when it has none).
const DefaultSubscription = "default"

var errBadSubscription = errors.New("bad subscription")

// everything reports whether s matches every event.
func (s *Subscription) everything() bool {
	return s.Types == nil && s.Tables == nil && len(s.Where) == 0
}

// match reports whether e is in s.
func (s *Subscription) match(e *entry) bool {
	if s.Types != nil && !s.Types[e.Type] {
		return false
	}
	if s.Tables != nil && !s.Tables[e.Table] {
		return false
	}
	for _, w := range s.Where {
		if v, ok := e.column(w.Column); !ok || v != w.Value {
			return false
		}
	}
	return true
}

// ParseQuery reads the subscription a connection starts with from its URL:
//
//	?types=fact_created,fact_updated&tables=t_f_budget_fact&where=financial_center_id=12
//
// types and tables are comma-separated lists; where may repeat (all must
// hold). Without any of them the subscription is everything.
func ParseQuery(q url.Values) (*Subscription, error) {
	s := &Subscription{ID: DefaultSubscription}
	var err error
	if v, ok := q["types"]; ok {
		if s.Types, err = nameSet("types", splitList(v)); err != nil {
			return nil, err
		}
	}
	if v, ok := q["tables"]; ok {
		if s.Tables, err = nameSet("tables", splitList(v)); err != nil {
			return nil, err
		}
	}
	if len(q["where"]) > maxConds {
		return nil, fmt.Errorf("%w: at most %d where conditions", errBadSubscription, maxConds)
	}
	for _, w := range q["where"] {
		col, val, ok := strings.Cut(w, "=")
		if !ok {
			return nil, fmt.Errorf("%w: where must be column=value, got %q", errBadSubscription, clip(w))
		}
		c, err := newCond(col, val)
		if err != nil {
			return nil, err
		}
		s.Where = append(s.Where, c)
	}
	return s, nil
}

// splitList joins repeated parameters and splits them on commas, dropping
// empty items.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for item := range strings.SplitSeq(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				out = append(out, item)
			}
		}
	}
	return out
}

// nameSet checks a list of type or table names. An empty list is refused:
// it would match nothing, which is never what a client means.
func nameSet(what string, names []string) (map[string]bool, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: %s is empty", errBadSubscription, what)
	}
	if len(names) > maxNames {
		return nil, fmt.Errorf("%w: at most %d %s", errBadSubscription, maxNames, what)
	}
	set := make(map[string]bool, len(names))
	for _, n := range names {
		if len(n) > maxNameLen {
			return nil, fmt.Errorf("%w: %s entry longer than %d bytes", errBadSubscription, what, maxNameLen)
		}
		if what == "tables" {
			n = notify.TableName(n) // "public.facts" is "facts"
		}
		if n == "" {
			// Matches nothing, like an empty list (a WebSocket message's
			// [""] reaches here; the query's empty items were dropped).
			return nil, fmt.Errorf("%w: %s has an empty entry", errBadSubscription, what)
		}
		if !utf8.ValidString(n) {
			return nil, fmt.Errorf("%w: %s entry is not UTF-8", errBadSubscription, what) // no event's is
		}
		set[n] = true
	}
	return set, nil
}

func newCond(col, val string) (Cond, error) {
	if !isIdent(col) {
		return Cond{}, fmt.Errorf("%w: where column must be a column name, got %q", errBadSubscription, clip(col))
	}
	if len(val) > maxValueLen {
		return Cond{}, fmt.Errorf("%w: where value longer than %d bytes", errBadSubscription, maxValueLen)
	}
	if !utf8.ValidString(val) {
		// A row's values are UTF-8 (the database's text): this matches nothing.
		return Cond{}, fmt.Errorf("%w: where value is not UTF-8", errBadSubscription)
	}
	return Cond{Column: col, Value: val}, nil
}

// isIdent accepts what PostgreSQL accepts as an unquoted column name, up
// to its 63-byte limit.
func isIdent(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// clip keeps error messages about client input short.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// subscribeMsg is the WebSocket message that adds or replaces one
// subscription:
//
//	{"type":"subscribe","id":"s1","types":["fact_created"],"tables":["t_f_budget_fact"],"where":{"financial_center_id":12}}
//
// and, with only type and id, removes one ("unsubscribe").
type subscribeMsg struct {
	Type   string                     `json:"type"`
	ID     *string                    `json:"id"`
	Types  []string                   `json:"types"`
	Tables []string                   `json:"tables"`
	Where  map[string]json.RawMessage `json:"where"`
}

// parseSubscribe decodes a subscribe message. Where values may be JSON
// strings, numbers, booleans or null, compared in canonical form.
func parseSubscribe(m *subscribeMsg) (*Subscription, error) {
	s := &Subscription{}
	if m.ID != nil {
		if *m.ID == "" || len(*m.ID) > maxSubIDLen {
			return nil, fmt.Errorf("%w: id must be 1 to %d bytes", errBadSubscription, maxSubIDLen)
		}
		s.ID = *m.ID
	}
	var err error
	if m.Types != nil {
		if s.Types, err = nameSet("types", m.Types); err != nil {
			return nil, err
		}
	}
	if m.Tables != nil {
		if s.Tables, err = nameSet("tables", m.Tables); err != nil {
			return nil, err
		}
	}
	if len(m.Where) > maxConds {
		return nil, fmt.Errorf("%w: at most %d where conditions", errBadSubscription, maxConds)
	}
	for col, raw := range m.Where {
		v, ok := canonical(raw)
		if !ok {
			return nil, fmt.Errorf("%w: where %q must be a string, number, boolean or null", errBadSubscription, clip(col))
		}
		c, err := newCond(col, v)
		if err != nil {
			return nil, err
		}
		s.Where = append(s.Where, c)
	}
	// A stable order, so equal subscriptions index and compare alike.
	slices.SortFunc(s.Where, func(a, b Cond) int { return strings.Compare(a.Column, b.Column) })
	return s, nil
}

// canonical is the form a row's value and a where value are compared in: a
// JSON string is its text, any other scalar its JSON text (12, true, null).
// So where=financial_center_id=12 matches the number 12 and the string "12".
// Objects and arrays are not comparable.
func canonical(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
		return s, true
	case '{', '[':
		return "", false
	}
	if !json.Valid(raw) {
		return "", false
	}
	return string(raw), true
}
