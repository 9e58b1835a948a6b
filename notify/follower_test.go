package notify_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

// articlesFollower is a database with articles tracked and a follower of
// its log, ready, that reads in pages of pageTx transactions (0: the
// default) and polls only once an hour: only the doorbell makes it read.
// It returns a connection to write with, the follower's store, and what
// the follower publishes.
func articlesFollower(t *testing.T, pageTx int) (*pgx.Conn, *notify.Store, <-chan notify.Event) {
	t.Helper()
	url := pgtest.NewDatabase(t)
	admin := connect(t, url)
	mustExec(t, admin, `CREATE TABLE articles (id serial PRIMARY KEY, name text)`)
	if err := notify.Install(t.Context(), admin, []config.Track{{Table: "articles", Prefix: "article"}}); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store := &notify.Store{Pool: pool, Logger: slog.New(slog.DiscardHandler), PageTx: pageTx}
	published := make(chan notify.Event, 100)
	runFollower(t, &notify.Follower{
		Store:        store,
		Logger:       slog.New(slog.DiscardHandler),
		PollInterval: time.Hour,
		Connect:      func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
		Publish: func(evs []notify.Event) {
			for _, e := range evs {
				published <- e
			}
		},
	})
	return admin, store, published
}

// nextPublished waits for the next event published and checks that it
// carries want.
func nextPublished(t *testing.T, published <-chan notify.Event, want string) {
	t.Helper()
	select {
	case e := <-published:
		if e.Type != "article_created" || !strings.Contains(string(e.Data), want) {
			t.Fatalf("published %s %s, want an article_created with %s", e.Type, e.Data, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s not published within 20 s", want)
	}
}

// Commits that come one at a time cost the follower one read each: a page
// that was not full says the log ended there, so it does not ask again to
// find the end (it did, twice the queries, when every catch-up ended with
// an empty read). A full page is read on (TestFollowerSkipsBadInput's paged
// follower, one transaction a page).
func TestFollowerReadsOncePerCommit(t *testing.T) {
	t.Parallel()
	admin, store, published := articlesFollower(t, 0)
	const commits = 20
	before := store.Pages()
	for i := range commits {
		name := fmt.Sprintf("one-%d", i)
		mustExec(t, admin, `INSERT INTO articles (name) VALUES ($1)`, name)
		nextPublished(t, published, name)
	}
	// Each commit rang once and was read once; a stray wake-up (a
	// notification coalesced late) may add a read, never a read per commit.
	if got := store.Pages() - before; got < commits || got > commits+commits/4 {
		t.Errorf("%d reads of the log for %d commits one at a time, want %d (%d: an empty read after each)",
			got, commits, commits, 2*commits)
	}
}

// Transactions without events (rows of rtgw.tx whose events were deleted by
// hand; the gateway never writes one) are passed over, however many come
// in a row (pages of 16 here): a page of them used to read as the end of
// the log, and more than a page of them stopped the follower there for good.
func TestFollowerPassesTransactionsWithoutEvents(t *testing.T) {
	t.Parallel()
	admin, _, published := articlesFollower(t, 16)
	mustExec(t, admin, `INSERT INTO articles (name) VALUES ('before')`)
	nextPublished(t, published, "before")
	// 40 of them: two and a half pages. Their xids are far above any this
	// test's server hands out.
	mustExec(t, admin, `INSERT INTO rtgw.tx (xid, seq, committed_at)
SELECT (1000000000000 + i)::text::xid8, nextval('rtgw.tx_seq'), clock_timestamp() FROM generate_series(1, 40) i`)
	mustExec(t, admin, `INSERT INTO articles (name) VALUES ('after')`)
	nextPublished(t, published, "after")
}
