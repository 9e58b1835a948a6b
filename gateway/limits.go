package gateway

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// retryAfter is the Retry-After (seconds) of a 429 or 503 refusal: long
// enough that a refused client does not hammer a full gateway, short
// enough that a freed slot is soon used.
const retryAfter = 5

// clientAddrs finds the address a request comes from. The gateway sits
// behind nginx, so the TCP peer is usually the proxy; only a peer in the
// trusted list may name the client, else any client could pick its own
// address and escape the per-address limit.
type clientAddrs struct {
	trusted []netip.Prefix
}

func (a clientAddrs) isTrusted(ip netip.Addr) bool {
	for _, p := range a.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// of returns the client's address: the peer's, or, when the peer is a
// trusted proxy, the rightmost X-Forwarded-For entry that is not itself a
// trusted proxy (each proxy appends the address it was connected from, so
// entries left of that one are whatever the client claimed), else
// X-Real-IP. The zero Addr means unknown (never from a TCP listener).
func (a clientAddrs) of(r *http.Request) netip.Addr {
	peer := parseAddr(r.RemoteAddr)
	if !peer.IsValid() || !a.isTrusted(peer) {
		return peer
	}
	client := netip.Addr{}
	if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		hops := strings.Split(strings.Join(xff, ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			ip := parseAddr(strings.TrimSpace(hops[i]))
			if !ip.IsValid() {
				break // not written by a proxy we trust: stop believing the chain
			}
			client = ip
			if !a.isTrusted(ip) {
				return ip
			}
		}
	}
	if ip := parseAddr(strings.TrimSpace(r.Header.Get("X-Real-IP"))); ip.IsValid() && !a.isTrusted(ip) {
		return ip
	}
	if client.IsValid() {
		return client // every hop a trusted proxy: a request from one of them
	}
	return peer
}

// parseAddr reads "ip", "ip:port" or "[ip]:port"; the zero Addr if none.
func parseAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		return netip.Addr{}
	}
	return ip.WithZone("").Unmap()
}

// addrKey is what the per-address limit counts by: an IPv4 address, or
// an IPv6 address's /64, the block one subscriber gets.
func addrKey(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// addrSlots counts the long-lived requests (WebSockets, SSE streams,
// long-polls) of each client address against one limit.
type addrSlots struct {
	max int // 0: no limit

	mu sync.Mutex
	n  map[netip.Addr]int
}

func newAddrSlots(max int) *addrSlots { return &addrSlots{max: max, n: map[netip.Addr]int{}} }

// acquire takes a slot for ip, or reports that its address has none left.
func (s *addrSlots) acquire(ip netip.Addr) bool {
	k := addrKey(ip)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.max > 0 && s.n[k] >= s.max {
		return false
	}
	s.n[k]++
	return true
}

func (s *addrSlots) release(ip netip.Addr) {
	k := addrKey(ip)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[k]--; s.n[k] <= 0 {
		delete(s.n, k)
	}
}

// slots is a counting limit: SSE streams, long-polls in progress.
type slots struct {
	max int64 // 0: no limit
	n   atomic.Int64
}

func (s *slots) acquire() bool {
	if n := s.n.Add(1); s.max > 0 && n > s.max {
		s.n.Add(-1)
		return false
	}
	return true
}

func (s *slots) release()   { s.n.Add(-1) }
func (s *slots) len() int64 { return s.n.Load() }

// admit takes a slot of limit and one of ip's address for an SSE stream or
// a long-poll, or answers the refusal: 429 when the address has too many
// (it is this client's doing), 503 when the gateway is full. Both carry
// Retry-After. The caller calls the returned release when done.
func admit(w http.ResponseWriter, limit *slots, addrs *addrSlots, ip netip.Addr, what string) (release func(), ok bool) {
	if !addrs.acquire(ip) {
		refuse(w, http.StatusTooManyRequests, "too many connections from this address ("+strconv.Itoa(addrs.max)+" at most)")
		return nil, false
	}
	if !limit.acquire() {
		addrs.release(ip)
		refuse(w, http.StatusServiceUnavailable, "too many "+what+" on this gateway; retry later")
		return nil, false
	}
	return func() { limit.release(); addrs.release(ip) }, true
}

func refuse(w http.ResponseWriter, code int, detail string) {
	w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	writeJSON(w, code, map[string]string{"detail": detail})
}
