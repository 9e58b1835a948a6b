package gateway

import (
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/budget-rt/gateway/notify"
)

// Tokens come from anyone: parsing must never panic, and nothing but a
// token signed with the secret may pass.
func FuzzWSToken(f *testing.F) {
	a := &Auth{Secret: []byte("fuzz-secret")}
	good, _ := a.MintWS(User{ID: 5}, time.Minute)
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIiwidHlwZSI6IndzIn0.")
	other := &Auth{Secret: []byte("other")}
	forged, _ := other.MintWS(User{ID: 5}, time.Minute)
	f.Add(forged)
	f.Fuzz(func(t *testing.T, tok string) {
		u, err := a.WSToken(t.Context(), tok)
		if err != nil {
			return
		}
		// Accepted: it must verify with the secret on its own.
		if _, perr := jwt.Parse(tok, func(*jwt.Token) (any, error) { return a.Secret, nil },
			jwt.WithValidMethods([]string{"HS256"})); perr != nil {
			t.Fatalf("accepted %q as user %d, but it does not verify: %v", tok, u.ID, perr)
		}
	})
}

// since comes from the long-poll's query string.
func FuzzParseSince(f *testing.F) {
	for _, s := range []string{"", "0", "1767225600.123456", "-1", "NaN", "Inf", "1e400", "0x10", "1e11"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := parseSince(s)
		if err == nil && !ts.IsZero() && (ts.Before(time.Unix(0, 0)) || ts.After(time.Unix(1e11+1, 0))) {
			t.Fatalf("parseSince(%q) accepted %v", s, ts)
		}
	})
}

// Frames are built from database values (event names from a column's
// value, rows of any content): the result must always be valid JSON with
// the event's fields intact.
func FuzzFrame(f *testing.F) {
	f.Add("budget_fact_created", `{"id":1}`, false)
	f.Add("odd\"type\n", `{"a":"\u2028<script>"}`, true)
	f.Fuzz(func(t *testing.T, typ, data string, truncated bool) {
		if !json.Valid([]byte(data)) {
			return // the log holds jsonb: data is always valid JSON
		}
		e := newEntry(notify.Event{Pos: notify.Position{Seq: 3, ID: 4}, Type: typ, Data: []byte(data), Truncated: truncated})
		var got struct {
			ID, Type, Event string
			Truncated       bool
		}
		if err := json.Unmarshal(e.frame, &got); err != nil {
			t.Fatalf("frame %q is not JSON: %v", e.frame, err)
		}
		if got.ID != "3-4" || got.Truncated != truncated || (got.Type != typ && utf8.ValidString(typ)) {
			t.Fatalf("frame %s lost fields (type %q)", e.frame, typ)
		}
	})
}
