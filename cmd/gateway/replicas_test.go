package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Three replicas behind one nginx upstream, each with its own LISTEN
// connection: all deliver the same events in the same order with the same
// ids, and a client whose replica dies resumes through nginx on another
// with its last id, losing nothing and receiving nothing twice.
func TestThreeReplicasBehindNginx(t *testing.T) {
	t.Parallel()
	requireNginx(t)
	db := newTestDB(t)
	reps := []*gw{startGateway(t, db), startGateway(t, db), startGateway(t, db)}
	var servers []string
	for _, g := range reps {
		servers = append(servers, strings.TrimPrefix(g.base, "http://"))
	}
	// One upstream with three servers: nginx spreads new connections round
	// robin and skips a server that refuses.
	proxy := &gw{base: startNginx(t, strings.Join(servers, ";\n        server "))}

	var direct []*wsClient
	for _, g := range reps {
		direct = append(direct, dialWS(t, g, ""))
	}
	var viaProxy []*wsClient
	for range 6 {
		viaProxy = append(viaProxy, dialWS(t, proxy, ""))
	}
	// One more client, on replica 0, which is about to die.
	doomed := dialWS(t, reps[0], "")

	const writers, per = 3, 40
	var wg sync.WaitGroup
	stopAt := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				if w == 0 && i == per/2 {
					close(stopAt)
				}
				db.exec(t, `INSERT INTO facts (amount, fact_date, description) VALUES ($1, '2026-01-11', $2)`, i, fmt.Sprintf("w%d", w))
			}
		}()
	}
	// Replica 0 dies mid-stream; its client has read part of the stream.
	<-stopAt
	got := doomed.take(t, 5)
	reps[0].stop(t)
	wg.Wait()
	db.exec(t, `INSERT INTO articles (name) VALUES ('end')`)
	const total = writers*per + 1

	want := ids(direct[1].take(t, total))
	if !slices.Equal(ids(direct[2].take(t, total)), want) {
		t.Fatalf("replicas 1 and 2 disagree")
	}
	// Replica 0's direct client got a prefix of the same stream, then 1001.
	var zero []frame
	for {
		select {
		case f := <-direct[0].frames:
			zero = append(zero, f)
			continue
		case <-time.After(50 * time.Millisecond):
		}
		break
	}
	if !slices.Equal(ids(zero), want[:len(zero)]) {
		t.Fatalf("replica 0's client got ids that are not a prefix of the others'")
	}
	for i, c := range viaProxy {
		// Clients on replica 0 were cut; the others got everything.
		var fs []frame
		deadline := time.After(20 * time.Second)
	read:
		for len(fs) < total {
			select {
			case f := <-c.frames:
				fs = append(fs, f)
			case ce := <-c.closed:
				c.closed <- ce
				break read
			case <-deadline:
				break read
			}
		}
		if !slices.Equal(ids(fs), want[:len(fs)]) {
			t.Fatalf("proxy client %d: ids are not a prefix of the stream", i)
		}
	}

	// The doomed client resumes through nginx from its last id: exactly the rest.
	for {
		select {
		case f := <-doomed.frames:
			got = append(got, f)
			continue
		case <-time.After(50 * time.Millisecond):
		}
		break
	}
	if !slices.Equal(ids(got), want[:len(got)]) {
		t.Fatalf("doomed client's ids are not a prefix of the stream")
	}
	resumed := dialWS(t, proxy, "last_event_id="+got[len(got)-1].ID)
	rest := resumed.take(t, total-len(got))
	if !slices.Equal(ids(append(got, rest...)), want) {
		t.Fatalf("after resuming on another replica the stream differs:\n got %v\nwant %v", ids(append(got, rest...)), want)
	}
	t.Logf("client of the dead replica had %d of %d events, resumed through nginx for the other %d", len(got), total, len(rest))
}
