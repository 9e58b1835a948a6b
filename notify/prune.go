package notify

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Pruner keeps the event log bounded: every Interval it removes the
// transactions older than MaxAge or beyond the newest MaxEvents events, a
// batch at a time, through rtgw.prune. Several replicas may run one; the
// database lets one of them prune at a time.
type Pruner struct {
	Pool      *pgxpool.Pool
	Logger    *slog.Logger
	Interval  time.Duration
	MaxAge    time.Duration
	MaxEvents int64
	// Pruned, when set, is told the oldest commit sequence still in the log
	// after a prune, so the replay window can drop what the log no longer
	// has.
	Pruned func(oldest int64)
}

// Run prunes until ctx ends. It returns nil on cancellation.
func (p *Pruner) Run(ctx context.Context) error {
	tick := time.NewTicker(p.Interval)
	defer tick.Stop()
	for {
		if n, err := p.Prune(ctx); err != nil && ctx.Err() == nil {
			p.Logger.Warn("prune event log", "err", err)
		} else if n > 0 {
			p.Logger.Info("pruned event log", "transactions", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Prune runs rtgw.prune until it has nothing left to remove (bounded, so a
// huge backlog is worked off over several intervals) and returns how many
// transactions went.
func (p *Pruner) Prune(ctx context.Context) (int64, error) {
	var total int64
	for range 100 {
		var n int64
		err := p.Pool.QueryRow(ctx, `SELECT rtgw.prune(make_interval(secs => $1), $2)`,
			p.MaxAge.Seconds(), p.MaxEvents).Scan(&n)
		if err != nil {
			return total, fmt.Errorf("prune: %w", err)
		}
		total += n
		if n == 0 {
			break
		}
	}
	if total > 0 && p.Pruned != nil {
		store := Store{Pool: p.Pool}
		oldest, err := store.Oldest(ctx)
		if err != nil {
			return total, err
		}
		p.Pruned(oldest)
	}
	return total, nil
}
