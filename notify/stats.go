package notify

import (
	"context"
	"fmt"
)

// Backlog is what the database holds that a gateway has not read yet, for
// metrics.
type Backlog struct {
	// Pending counts the events committed after the reader's position (capped
	// at maxPending, so a scrape stays cheap however far behind it is).
	Pending int64
	// QueueUsage is pg_notification_queue_usage(): the fraction of the
	// NOTIFY queue in use. Past half, the commit trigger stops ringing.
	QueueUsage float64
}

// maxPending caps the count of Backlog.Pending.
const maxPending = 1_000_000

// Backlog counts the events committed after pos and reads the NOTIFY queue's
// usage, in one round trip.
func (s *Store) Backlog(ctx context.Context, pos Position) (Backlog, error) {
	var b Backlog
	err := s.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid
            WHERE t.seq >= $1 AND (t.seq > $1 OR e.id > $2)
            LIMIT $3) p),
       pg_notification_queue_usage()`, pos.Seq, pos.ID, maxPending).Scan(&b.Pending, &b.QueueUsage)
	if err != nil {
		return Backlog{}, fmt.Errorf("read backlog: %w", err)
	}
	return b, nil
}
