package gateway

import (
	"encoding/json"
	"strconv"
)

// A Rule makes the rows of one tracked table visible only to some users: a
// row is visible to a user when the row's Column value is one of the user's
// values of Claim. Claim "user" is the authenticated user's id (the sub of a
// WebSocket token, the user_id of an access token); any other name is read
// from the token's claims, a single value or an array.
//
// Tables without a rule are visible to everyone, as in the family budget.
type Rule struct {
	Table  string
	Column string
	Claim  string
}

// ClaimUser is the rule claim that stands for the authenticated user's id.
const ClaimUser = "user"

func (r Rule) String() string { return r.Table + ":" + r.Column + "=" + r.Claim }

// viewer is what one connection may see: for each table with a rule, the
// rule's column and the values of it visible to the connection's user. It
// is fixed for the connection's life (the token it was opened with).
type viewer map[string]*view

type view struct {
	column string
	values map[string]bool
}

// newViewer works out u's visible values for each rule.
func newViewer(rules []Rule, u User) viewer {
	if len(rules) == 0 {
		return nil
	}
	v := make(viewer, len(rules))
	for _, r := range rules {
		set := map[string]bool{}
		for _, val := range u.Claims[r.Claim] {
			set[val] = true
		}
		v[r.Table] = &view{column: r.Column, values: set}
	}
	return v
}

// visible reports whether the row of e may be seen. A row of a ruled table
// without the rule's column (a batch event, a truncated row whose key lacks
// it) is seen by no one: when in doubt, nothing leaks.
func (v viewer) visible(e *entry) bool {
	w := v[e.Table]
	if w == nil {
		return true
	}
	val, ok := e.column(w.column)
	return ok && w.values[val]
}

// claimValues renders a claim as canonical values: a scalar is one value, an
// array its scalar elements; anything else none.
func claimValues(c any) []string {
	switch c := c.(type) {
	case []any:
		out := make([]string, 0, len(c))
		for _, x := range c {
			if v, ok := claimScalar(x); ok {
				out = append(out, v)
			}
		}
		return out
	default:
		if v, ok := claimScalar(c); ok {
			return []string{v}
		}
	}
	return nil
}

// claimScalar gives a decoded JSON scalar the canonical form of canonical.
func claimScalar(x any) (string, bool) {
	switch x := x.(type) {
	case string:
		return x, true
	case json.Number: // as tokens are parsed: exactly as written
		if n, ok := exactInt64(x); ok {
			return strconv.FormatInt(n, 10), true
		}
		return string(x), true
	case float64:
		if x == float64(int64(x)) {
			return strconv.FormatInt(int64(x), 10), true
		}
		b, err := json.Marshal(x)
		return string(b), err == nil
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}
