package notify

import (
	"strconv"
	"strings"
)

// What the gateway's channel carries. The commit trigger sends the commit's
// sequence number ("1042"); each follower sends itself heartbeats ("hb
// <16 hex digits> <n>"). Both are only doorbells: the follower reads the
// table, so no payload can make it publish anything. Anything else is some
// other program's NOTIFY, and is counted and ignored (it does not ring).
//
// Kinds of bad notification: the keys of Stats.BadNotifications.
const (
	BadNotifyEmpty     = "empty"     // no payload
	BadNotifyOversized = "oversized" // longer than maxPayload: no payload of ours is
	BadNotifyMalformed = "malformed" // neither a commit sequence nor a heartbeat
	// A commit sequence rtgw.tx_seq has not issued. It rings like a real
	// one (it cannot be told apart on arrival without a query), and is
	// judged after the read it caused finds nothing that far.
	BadNotifyFuture = "future"
)

// maxPayload is far above the longest payload the gateway sends ("hb", 16
// hex digits and a 19-digit counter): longer ones are not even parsed.
const maxPayload = 64

// payload is a notification the gateway understands.
type payload struct {
	seq  int64  // the commit's sequence number; 0 for a heartbeat
	beat uint64 // the heartbeat's sender (nonzero for a heartbeat)
	n    int64  // the heartbeat's number
}

// formatBeat is the payload of heartbeat n from the follower beat.
func formatBeat(beat uint64, n int64) string {
	b := make([]byte, 0, 40)
	b = append(b, "hb "...)
	h := strconv.FormatUint(beat, 16)
	for range 16 - len(h) {
		b = append(b, '0')
	}
	b = append(b, h...)
	b = append(b, ' ')
	return string(strconv.AppendInt(b, n, 10))
}

// parsePayload reads a notification's payload, or names the kind of bad
// payload it is. Only the exact forms the gateway sends are accepted.
func parsePayload(s string) (payload, string) {
	switch {
	case s == "":
		return payload{}, BadNotifyEmpty
	case len(s) > maxPayload:
		return payload{}, BadNotifyOversized
	}
	if rest, ok := strings.CutPrefix(s, "hb "); ok {
		hex, num, ok := strings.Cut(rest, " ")
		if !ok || len(hex) != 16 {
			return payload{}, BadNotifyMalformed
		}
		for i := 0; i < len(hex); i++ {
			if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return payload{}, BadNotifyMalformed
			}
		}
		beat, err := strconv.ParseUint(hex, 16, 64)
		n, ok := positive(num)
		if err != nil || beat == 0 || !ok {
			return payload{}, BadNotifyMalformed
		}
		return payload{beat: beat, n: n}, ""
	}
	seq, ok := positive(s)
	if !ok {
		return payload{}, BadNotifyMalformed
	}
	return payload{seq: seq}, ""
}

// positive parses a positive int64 written as strconv writes it (no sign,
// no leading zero).
func positive(s string) (int64, bool) {
	if s == "" || s[0] < '1' || s[0] > '9' {
		return 0, false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
