package notify

import (
	"errors"
	"testing"
)

func TestParsePosition(t *testing.T) {
	t.Parallel()
	good := map[string]Position{
		"1-1":     {1, 1},
		"42-9001": {42, 9001},
		"9223372036854775807-9223372036854775807": {1<<63 - 1, 1<<63 - 1},
	}
	for s, want := range good {
		got, err := ParsePosition(s)
		if err != nil || got != want {
			t.Errorf("ParsePosition(%q) = %v, %v; want %v", s, got, err, want)
		}
		if got.String() != s {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), s)
		}
	}
	for _, s := range []string{"", "-", "1", "1-", "-1", "0-1", "1-0", "-1-2", "01-2", "1-02", "+1-2", "1-2-3", "a-b",
		"1 -2", "9223372036854775808-1", "1.5-2"} {
		if p, err := ParsePosition(s); !errors.Is(err, ErrBadPosition) {
			t.Errorf("ParsePosition(%q) = %v, %v; want ErrBadPosition", s, p, err)
		}
	}
}

func TestPositionCompare(t *testing.T) {
	t.Parallel()
	ordered := []Position{{}, {1, 5}, {1, 9}, {2, 1}, {2, 3}, {10, 2}}
	for i, p := range ordered {
		for j, q := range ordered {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := p.Compare(q); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", p, q, got, want)
			}
		}
	}
}
