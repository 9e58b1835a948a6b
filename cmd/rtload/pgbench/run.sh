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
# Settings: SECONDS_PER_RUN (10), ROUNDS (2), CLIENTS ("1 8"), RATE (unset:
# as fast as the clients go; else pgbench -R, transactions per second in all), and
# SYNCHRONOUS_COMMIT (off, local, on...: the benchmark sessions' setting; unset
# keeps the server's), the main knob an operator has on the cost of a commit.
#
# MODES ("untracked notify tracked") may add two that measure capture off the
# write path, by logical decoding, as an upper bound (measured before the gateway
# captured this way): the writes are untracked while a pgoutput slot on facts is
# read on the same machine, by pg_recvlogical to /dev/null (decoded), or by one
# SQL session every 10 ms that stores each batch in a table (stored, standing
# in for the log a gateway would keep). They need wal_level = logical: the
# throwaway cluster then runs every mode with it; a DATABASE_URL server must
# have it already. Their lines add how far the slot was behind when pgbench
# stopped and how long it took to catch up.
#
#   MODES="untracked notify tracked decoded stored" SYNCHRONOUS_COMMIT=off cmd/rtload/pgbench/run.sh
#
# MODES may also add gateway: capture by logical decoding as the gateway does
# it (GATEWAY_CAPTURE=decoding): `gateway migrate` switches facts to it and a
# gateway, built from this checkout (needs go), reads the slot and writes the
# event log during the run. Its line adds how far the slot was behind and how
# long the gateway took to catch up.
#
#   MODES="untracked notify tracked gateway" SYNCHRONOUS_COMMIT=off cmd/rtload/pgbench/run.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
secs=${SECONDS_PER_RUN:-10}
rounds=${ROUNDS:-2}
clients=${CLIENTS:-"1 8"}
modes=${MODES:-"untracked notify tracked"}
decoding=""
for m in $modes; do
	case $m in
	untracked | notify | tracked) ;;
	decoded | stored | gateway) decoding=yes ;;
	*) echo "run.sh: unknown mode $m (untracked, notify, tracked, decoded, stored, gateway)" >&2; exit 2 ;;
	esac
done
case " $modes " in
*" untracked "*) ;;
*) echo "run.sh: MODES must include untracked, the baseline the others are compared with" >&2; exit 2 ;;
esac

bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do bindir=$d; break; done
find_tool() {
	if command -v "$1" >/dev/null 2>&1; then command -v "$1"; elif [ -x "$bindir/$1" ]; then echo "$bindir/$1"; else
		echo "run.sh: $1 not found (Debian: apt-get install postgresql-client postgresql)" >&2; exit 1; fi
}
PSQL=$(find_tool psql)
PGBENCH=$(find_tool pgbench)
if [ -n "$decoding" ]; then RECVLOGICAL=$(find_tool pg_recvlogical); fi
gwbin=""
case " $modes " in
*" gateway "*)
	gwdir=$(mktemp -d /tmp/rtload-gateway-XXXXXX)
	gwbin="$gwdir/gateway"
	(cd "$repo" && go build -o "$gwbin" ./cmd/gateway)
	;;
esac

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
	if [ -n "$decoding" ]; then
		printf 'wal_level = logical\nmax_replication_slots = 4\nmax_wal_senders = 4\n' >>"$dir/data/postgresql.conf"
	fi
	$as "$PG_CTL" -D "$dir/data" -l "$dir/log" -w start >/dev/null
	url="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	echo "throwaway cluster: $("$PSQL" "$url" -Atc 'SHOW server_version') on port $port, fsync $("$PSQL" "$url" -Atc 'SHOW fsync'), synchronous_commit $("$PSQL" "$url" -Atc 'SHOW synchronous_commit')"
fi

q() { PGOPTIONS='-c client_min_messages=warning' "$PSQL" "$url" -X -q -v ON_ERROR_STOP=1 "$@"; }
if [ -n "$decoding" ] && [ "$(q -Atc 'SHOW wal_level')" != logical ]; then
	echo "run.sh: the decoded and stored modes need wal_level = logical on the server (it is $(q -Atc 'SHOW wal_level'))" >&2
	exit 1
fi
q -f "$repo/sql/examples/demo-tables.sql" -f "$repo/sql/install.sql" >/dev/null
q -c "CREATE OR REPLACE FUNCTION rtload_bench_notify() RETURNS trigger LANGUAGE plpgsql AS
      \$\$ BEGIN PERFORM pg_notify('rtload_bench', NEW.id::text); RETURN NULL; END \$\$;" >/dev/null

# The logical decoding modes' reader: started by mode, stopped by unread.
reader=""
unread() {
	[ -n "$decoding" ] || return 0
	if [ -n "$reader" ]; then kill "$reader" 2>/dev/null || true; wait "$reader" 2>/dev/null || true; reader=""; fi
	# The slot goes with its reader; a reader just killed may hold it a moment longer.
	i=0
	while [ "$(q -Atc "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'rtload_bench'")" != 0 ]; do
		q -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'rtload_bench' AND active" \
			-c "SELECT pg_drop_replication_slot('rtload_bench') FROM pg_replication_slots WHERE slot_name = 'rtload_bench' AND NOT active" \
			>/dev/null 2>&1 || true
		i=$((i + 1)); [ $i -lt 100 ] || { echo "run.sh: could not drop the slot rtload_bench" >&2; exit 1; }
		sleep 0.1
	done
	q -c "DROP PUBLICATION IF EXISTS rtload_bench; DROP TABLE IF EXISTS rtload_bench_changes" >/dev/null
	# The gateway mode's switch, undone by hand (its slot went above): the
	# other modes track by triggers again.
	q -c "DELETE FROM rtgw.decoding; DROP PUBLICATION IF EXISTS rtgw" >/dev/null
}

# caught_up prints how far the slot is behind the WAL written so far, then
# waits (up to 2 minutes) until its reader has confirmed all of it and
# prints how long that took.
caught_up() {
	end=$(q -Atc "SELECT pg_current_wal_lsn()")
	behind=$(q -Atc "SELECT pg_size_pretty(pg_wal_lsn_diff('$end', confirmed_flush_lsn)) FROM pg_replication_slots WHERE slot_name = 'rtload_bench'")
	t0=$(date +%s.%N)
	i=0
	while [ "$(q -Atc "SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'rtload_bench'")" != t ]; do
		i=$((i + 1)); [ $i -lt 1200 ] || { echo "behind $behind, not caught up in 2 min"; return; }
		sleep 0.1
	done
	echo "behind $behind, caught up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f s", b - a}')"
}

mode() {
	unread
	case $1 in
	untracked | decoded | stored | gateway) sql="SELECT rtgw.untrack('facts'); DROP TRIGGER IF EXISTS rtload_bench_notify ON facts;" ;;
	notify) sql="SELECT rtgw.untrack('facts'); DROP TRIGGER IF EXISTS rtload_bench_notify ON facts;
	             CREATE TRIGGER rtload_bench_notify AFTER INSERT ON facts FOR EACH ROW EXECUTE FUNCTION rtload_bench_notify();" ;;
	tracked) sql="DROP TRIGGER IF EXISTS rtload_bench_notify ON facts; SELECT rtgw.track('facts', 'budget_fact');" ;;
	esac
	q -c "$sql" >/dev/null
	# The same starting point for every run: empty tables, a checkpoint.
	q -c "TRUNCATE facts, rtgw.event, rtgw.tx" -c "VACUUM ANALYZE facts" -c "CHECKPOINT" >/dev/null
	case $1 in
	decoded)
		q -c "CREATE PUBLICATION rtload_bench FOR TABLE facts" \
			-c "SELECT pg_create_logical_replication_slot('rtload_bench', 'pgoutput')" >/dev/null
		# Flush and report every second (the defaults are 10 s), so that
		# "caught up" is seen within one.
		"$RECVLOGICAL" -d "$url" --slot rtload_bench --start -o proto_version=1 -o publication_names=rtload_bench \
			-f /dev/null -F 1 -s 1 &
		reader=$!
		;;
	stored)
		q -c "CREATE PUBLICATION rtload_bench FOR TABLE facts" \
			-c "SELECT pg_create_logical_replication_slot('rtload_bench', 'pgoutput')" \
			-c "CREATE TABLE rtload_bench_changes (lsn pg_lsn NOT NULL, xid xid NOT NULL, data bytea NOT NULL)" >/dev/null
		# One session: read what the slot has, store it, every 10 ms; enough
		# statements for the run and two minutes of catching up.
		n=$(( (secs + 120) * 100 ))
		seq "$n" | sed "s/.*/INSERT INTO rtload_bench_changes SELECT lsn, xid, data FROM pg_logical_slot_get_binary_changes('rtload_bench', NULL, NULL, 'proto_version', '1', 'publication_names', 'rtload_bench'); SELECT pg_sleep(0.01);/" |
			"$PSQL" "$url" -X -q -v ON_ERROR_STOP=1 >/dev/null &
		reader=$!
		;;
	gateway)
		env DATABASE_URL="$url" GATEWAY_CAPTURE=decoding GATEWAY_CAPTURE_SLOT=rtload_bench GATEWAY_TRACK=facts:budget_fact \
			"$gwbin" migrate >/dev/null
		env DATABASE_URL="$url" GATEWAY_ADDR=127.0.0.1:0 GATEWAY_INSECURE_NO_AUTH=true GATEWAY_METRICS_ADDR=off \
			GATEWAY_LOG_LEVEL=warn GATEWAY_PRUNE_INTERVAL=0s "$gwbin" &
		reader=$!
		# Measure with the gateway reading the slot, not catching up after.
		i=0
		while [ "$(q -Atc "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'rtload_bench' AND active")" != 1 ]; do
			i=$((i + 1)); [ $i -lt 300 ] || { echo "run.sh: the gateway did not start reading the slot" >&2; exit 1; }
			sleep 0.1
		done
		;;
	esac
}

results=$(mktemp)
trap 'rm -f "$results"; if [ -n "$reader" ]; then kill "$reader" 2>/dev/null; fi; ${gwbin:+rm -rf "$gwdir"}; ${dir:+cleanup}' EXIT
echo "synchronous_commit of the benchmark sessions: ${SYNCHRONOUS_COMMIT:-the server's}; $secs s per run"
printf '%-10s %7s %5s %10s %14s\n' mode clients round tps "latency avg ms"
for r in $(seq "$rounds"); do
	for c in $clients; do
		for m in $modes; do
			mode "$m"
			out=$(PGOPTIONS="${SYNCHRONOUS_COMMIT:+-c synchronous_commit=$SYNCHRONOUS_COMMIT}" "$PGBENCH" "$url" -n -M prepared -f "$here/insert.sql" -c "$c" -j "$c" -T "$secs" ${RATE:+-R "$RATE"} 2>&1) || {
				echo "$out" >&2; exit 1; }
			tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
			lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
			extra=""
			if [ -n "$reader" ]; then extra="  slot: $(caught_up)"; fi
			if [ "$m" = gateway ]; then
				extra="$extra, logged $(q -Atc "SELECT count(*) FROM rtgw.event") events of $(q -Atc "SELECT count(*) FROM facts") rows"
			fi
			printf '%-10s %7s %5s %10s %14s%s\n' "$m" "$c" "$r" "$tps" "$lat" "$extra"
			echo "$m $c $tps $lat" >>"$results"
		done
	done
done

unread # a slot left behind would keep WAL for ever

echo
echo "mean over $rounds rounds, relative to untracked at the same client count:"
printf '%-10s %7s %10s %14s %12s %16s\n' mode clients tps "latency ms" "tps %" "added latency ms"
for c in $clients; do
	base=$(awk -v c="$c" '$1=="untracked" && $2==c {t+=$3; l+=$4; n++} END {printf "%f %f", t/n, l/n}' "$results")
	for m in $modes; do
		awk -v m="$m" -v c="$c" -v base="$base" 'BEGIN {split(base, b, " ")}
			$1==m && $2==c {t+=$3; l+=$4; n++}
			END {printf "%-10s %7s %10.0f %14.3f %11.0f%% %16.3f\n", m, c, t/n, l/n, 100*t/n/b[1], l/n-b[2]}' "$results"
	done
done
