package gateway

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
)

// resumeID is the id an SSE client resumes after: the Last-Event-ID header
// (EventSource sets it on reconnect, so it is newer than the URL's), else
// ?last_event_id=. Hub.Attach judges it.
func resumeID(h http.Header, q url.Values) string {
	if last := h.Get("Last-Event-ID"); last != "" {
		return last
	}
	return q.Get("last_event_id")
}

// Long-poll waits, in seconds.
const (
	pollTimeoutDefault = 5
	pollTimeoutMax     = 30
)

// parseTimeout reads the long-poll's ?timeout= in whole seconds: the
// default when empty, capped at the maximum.
func parseTimeout(s string) (int, error) {
	if s == "" {
		return pollTimeoutDefault, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, errors.New("timeout must be a whole number of seconds")
	}
	return min(n, pollTimeoutMax), nil
}
