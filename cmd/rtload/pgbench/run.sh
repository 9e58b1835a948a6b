#!/bin/sh
# Write-side cost of tracking, measured with pgbench: single-row INSERTs into
# facts (insert.sql) untracked, with a bare pg_notify trigger (the ceiling:
# NOTIFY alone serializes commits), and tracked by the gateway's triggers, at
# 1 and 8 clients, interleaved in one run so that all modes see the same
# machine. Prints tps and average latency per mode and client count.
#
#   DATABASE_URL=postgres://... cmd/rtload/pgbench/run.sh      # a database to bench in
#   cmd/rtload/pgbench/run.sh                                  # a throwaway cluster
#
# With DATABASE_URL, use a throwaway database: the script creates the demo
# tables there if absent, installs the gateway's SQL, switches the triggers on
# facts, and empties facts and the event log (rtgw.event, rtgw.tx) between
# runs; stop any gateway reading it first. Without DATABASE_URL it starts a
# cluster of its own with PostgreSQL's default settings (fsync and
# synchronous_commit on, as in production) in a temporary directory and
# removes it at the end. Needs psql and pgbench (Debian: postgresql-client),
# and initdb/pg_ctl for the throwaway cluster (postgresql).
#
# Settings: SECONDS_PER_RUN (10), ROUNDS (2), CLIENTS ("1 8"), and
# SYNCHRONOUS_COMMIT (off, local, on...: the benchmark sessions' setting; unset
# keeps the server's), the main knob an operator has on the cost of a commit.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
secs=${SECONDS_PER_RUN:-10}
rounds=${ROUNDS:-2}
clients=${CLIENTS:-"1 8"}

bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do bindir=$d; break; done
find_tool() {
	if command -v "$1" >/dev/null 2>&1; then command -v "$1"; elif [ -x "$bindir/$1" ]; then echo "$bindir/$1"; else
		echo "run.sh: $1 not found (Debian: apt-get install postgresql-client postgresql)" >&2; exit 1; fi
}
PSQL=$(find_tool psql)
PGBENCH=$(find_tool pgbench)

url=${DATABASE_URL:-}
if [ -z "$url" ]; then
	INITDB=$(find_tool initdb)
	PG_CTL=$(find_tool pg_ctl)
	dir=$(mktemp -d /tmp/rtload-pgbench-XXXXXX)
	chmod 755 "$dir"
	# PostgreSQL refuses to run as root: run the cluster as nobody then.
	as=""
	if [ "$(id -u)" = 0 ]; then chown nobody "$dir"; as="runuser -u nobody --"; fi
	port=$(( 20000 + $$ % 20000 ))
	cleanup() { $as "$PG_CTL" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
	trap cleanup EXIT INT TERM
	$as "$INITDB" -D "$dir/data" -U postgres -A trust >/dev/null
	cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
EOF
	$as "$PG_CTL" -D "$dir/data" -l "$dir/log" -w start >/dev/null
	url="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	echo "throwaway cluster: $("$PSQL" "$url" -Atc 'SHOW server_version') on port $port, fsync $("$PSQL" "$url" -Atc 'SHOW fsync'), synchronous_commit $("$PSQL" "$url" -Atc 'SHOW synchronous_commit')"
fi

q() { PGOPTIONS='-c client_min_messages=warning' "$PSQL" "$url" -X -q -v ON_ERROR_STOP=1 "$@"; }
q -f "$repo/sql/examples/demo-tables.sql" -f "$repo/sql/install.sql" >/dev/null
q -c "CREATE OR REPLACE FUNCTION rtload_bench_notify() RETURNS trigger LANGUAGE plpgsql AS
      \$\$ BEGIN PERFORM pg_notify('rtload_bench', NEW.id::text); RETURN NULL; END \$\$;" >/dev/null

mode() {
	case $1 in
	untracked) sql="SELECT rtgw.untrack('facts'); DROP TRIGGER IF EXISTS rtload_bench_notify ON facts;" ;;
	notify) sql="SELECT rtgw.untrack('facts'); DROP TRIGGER IF EXISTS rtload_bench_notify ON facts;
	             CREATE TRIGGER rtload_bench_notify AFTER INSERT ON facts FOR EACH ROW EXECUTE FUNCTION rtload_bench_notify();" ;;
	tracked) sql="DROP TRIGGER IF EXISTS rtload_bench_notify ON facts; SELECT rtgw.track('facts', 'budget_fact');" ;;
	esac
	q -c "$sql" >/dev/null
	# The same starting point for every run: empty tables, a checkpoint.
	q -c "TRUNCATE facts, rtgw.event, rtgw.tx" -c "VACUUM ANALYZE facts" -c "CHECKPOINT" >/dev/null
}

results=$(mktemp)
trap 'rm -f "$results"; ${dir:+cleanup}' EXIT
echo "synchronous_commit of the benchmark sessions: ${SYNCHRONOUS_COMMIT:-the server's}; $secs s per run"
printf '%-10s %7s %5s %10s %14s\n' mode clients round tps "latency avg ms"
for r in $(seq "$rounds"); do
	for c in $clients; do
		for m in untracked notify tracked; do
			mode "$m"
			out=$(PGOPTIONS="${SYNCHRONOUS_COMMIT:+-c synchronous_commit=$SYNCHRONOUS_COMMIT}" "$PGBENCH" "$url" -n -M prepared -f "$here/insert.sql" -c "$c" -j "$c" -T "$secs" 2>&1) || {
				echo "$out" >&2; exit 1; }
			tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
			lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
			printf '%-10s %7s %5s %10s %14s\n' "$m" "$c" "$r" "$tps" "$lat"
			echo "$m $c $tps $lat" >>"$results"
		done
	done
done

echo
echo "mean over $rounds rounds, relative to untracked at the same client count:"
printf '%-10s %7s %10s %14s %12s %16s\n' mode clients tps "latency ms" "tps %" "added latency ms"
for c in $clients; do
	base=$(awk -v c="$c" '$1=="untracked" && $2==c {t+=$3; l+=$4; n++} END {printf "%f %f", t/n, l/n}' "$results")
	for m in untracked notify tracked; do
		awk -v m="$m" -v c="$c" -v base="$base" 'BEGIN {split(base, b, " ")}
			$1==m && $2==c {t+=$3; l+=$4; n++}
			END {printf "%-10s %7s %10.0f %14.3f %11.0f%% %16.3f\n", m, c, t/n, l/n, 100*t/n/b[1], l/n-b[2]}' "$results"
	done
done
