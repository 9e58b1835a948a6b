package notify

import "testing"

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
