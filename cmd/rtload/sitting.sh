#!/bin/sh
# One sitting of the scenarios in the README's performance summary: a
# throwaway database (gateway demo), a gateway built from this checkout,
# and rtload against it, each scenario in turn on the same machine.
#
#   cmd/rtload/sitting.sh                  # every scenario once, about 5 minutes
#   ROUNDS=2 OUT=/tmp/sitting cmd/rtload/sitting.sh
#   SCENARIOS="ws1k-100 storm10k" cmd/rtload/sitting.sh
#   TOOL_NICE=19 SCENARIOS=ws10k-10 cmd/rtload/sitting.sh
#
# Scenarios (SCENARIOS, default all): ws1k-100, ws1k-100-batch, ws1k-300-batch,
# ws5k-20, ws10k-10, ws19k-5 (clients x rows/s, 20 s each) and storm10k (10,000
# clients at 10 rows/s, the gateway restarted 8 s in). Each run starts a fresh
# gateway, so its memory per connection is its own. Every run's report is kept
# in OUT (default: a new temporary directory) and its summary lines printed.
# A run that loses or repeats a row fails, and so does the sitting.
# TOOL_NICE runs rtload at that nice level (default 0, the gateway's own):
# at 19 the tool's readers take the CPU only when the gateway leaves it,
# standing in for clients on other machines.
#
# Needs go, curl, and PostgreSQL's server programs (initdb, pg_ctl: Debian's
# postgresql) for the demo's throwaway cluster. 19,000 clients need 19,000
# open files in each of the gateway and rtload: the script raises its soft
# limit to the hard one, and skips a scenario the hard limit cannot hold.
# Ports 127.0.0.1:18180 (demo), 18190 (gateway) and 18191 (its metrics) must
# be free.
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${ROUNDS:-1}
tool_nice=${TOOL_NICE:-0}
scenarios=${SCENARIOS:-"ws1k-100 ws1k-100-batch ws1k-300-batch ws5k-20 ws10k-10 ws19k-5 storm10k"}
out=${OUT:-$(mktemp -d /tmp/rtload-sitting-XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/rtload-sitting-bin-XXXXXX)
(cd "$repo" && go build -o "$work/gateway" ./cmd/gateway && go build -o "$work/rtload" ./cmd/rtload)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
files=$(ulimit -n)

export GATEWAY_MAX_CONNECTIONS=20000 GATEWAY_MAX_CONNECTIONS_PER_USER=20000 \
	GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=20000 GATEWAY_MAX_SSE_CLIENTS=2000

# The demo's gateway only holds the database; the measured one is started
# for each run, on its own port.
GATEWAY_ADDR=127.0.0.1:18180 GATEWAY_METRICS_ADDR=off setsid "$work/gateway" demo --every 0 >"$work/demo.log" 2>&1 &
demo=$!
gw=""
stop_gateway() {
	[ -n "$gw" ] || return 0
	kill -TERM "$gw" 2>/dev/null || true
	# An exited process its parent has not reaped yet still answers kill -0.
	while [ -e "/proc/$gw" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$gw/status" 2>/dev/null; do sleep 0.05; done
	wait "$gw" 2>/dev/null || true
	gw=""
}
cleanup() {
	stop_gateway
	[ -f "$work/gateway.pid" ] && kill -TERM "$(cat "$work/gateway.pid")" 2>/dev/null || true
	kill -TERM "$demo" 2>/dev/null || true
	wait "$demo" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # exit runs cleanup

db=""
i=0
while [ -z "$db" ]; do
	i=$((i + 1))
	if [ $i -gt 600 ] || ! kill -0 "$demo" 2>/dev/null; then
		echo "sitting.sh: the demo did not start:" >&2; cat "$work/demo.log" >&2; exit 1
	fi
	sleep 0.1
	db=$(grep -o "postgres://[^ ']*" "$work/demo.log" | head -1 || true)
done

# start.sh starts a gateway on the measured port and returns once it is
# ready; restart.sh (the storm's -restart-cmd) stops the running one first.
cat >"$work/start.sh" <<EOF
#!/bin/sh
DATABASE_URL='$db' GATEWAY_ADDR=127.0.0.1:18190 GATEWAY_METRICS_ADDR=127.0.0.1:18191 \\
GATEWAY_INSECURE_NO_AUTH=true GATEWAY_LOG_LEVEL=warn \\
	setsid '$work/gateway' serve >>'$out/gateway.log' 2>&1 </dev/null &
echo \$! >'$work/gateway.pid'
i=0
until curl -sf http://127.0.0.1:18190/readyz >/dev/null; do
	i=\$((i + 1)); [ \$i -lt 600 ] || { echo "the gateway did not become ready" >&2; exit 1; }
	sleep 0.05
done
EOF
cat >"$work/restart.sh" <<EOF
#!/bin/sh
pid=\$(cat '$work/gateway.pid'); kill -TERM "\$pid"
while [ -e /proc/\$pid ] && ! grep -q '^State:[[:space:]]*Z' /proc/\$pid/status 2>/dev/null; do sleep 0.05; done
exec '$work/start.sh'
EOF
chmod +x "$work/start.sh" "$work/restart.sh"

# tool runs rtload at nice $tool_nice. The gateway runs in a session of
# its own (setsid), and where the kernel groups each session's threads
# (sched_autogroup_enabled, common on desktops and small VMs) a nice level
# only counts within the group: the tool gets a session of its own, with
# the group's nice set too.
tool() {
	if [ "$tool_nice" = 0 ]; then
		"$@"
		return
	fi
	setsid -w sh -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"' "$tool_nice" "$@"
}

failed=0
run() { # name, rtload flags...
	name=$1
	shift
	"$work/start.sh"
	gw=$(cat "$work/gateway.pid")
	status=0
	tool "$work/rtload" -url http://127.0.0.1:18190 -metrics-url http://127.0.0.1:18191/metrics -db "$db" "$@" \
		>"$out/$name.txt" 2>"$out/$name.err" || status=$?
	# The storm's restart left another process than the one started here.
	gw=$(cat "$work/gateway.pid")
	stop_gateway
	echo "== $name $(date +%T)$( [ $status = 0 ] || echo " FAILED (status $status, see $out/$name.err)")"
	grep -E '^(machine|deliveries|latency|  +commit to the gateway|storm|gateway|tool CPU)' "$out/$name.txt" || true
	[ $status = 0 ] || failed=1
}

echo "sitting: $(nproc) CPUs, $files open files per process, rtload at nice $tool_nice, reports in $out"
r=0
while [ $r -lt "$rounds" ]; do
	r=$((r + 1))
	for s in $scenarios; do
		case $s in
		ws1k-100) run "$s-$r" -ws 1000 -rate 100 -duration 20s ;;
		ws1k-100-batch) run "$s-$r" -ws 1000 -rate 100 -duration 20s -batch ;;
		ws1k-300-batch) run "$s-$r" -ws 1000 -rate 300 -duration 20s -batch ;;
		ws5k-20) run "$s-$r" -ws 5000 -rate 20 -duration 20s ;;
		ws10k-10) run "$s-$r" -ws 10000 -rate 10 -duration 20s ;;
		ws19k-5)
			if [ "$files" -lt 19500 ]; then
				echo "== $s-$r skipped: $files open files per process, 19,500 needed"
				continue
			fi
			run "$s-$r" -ws 19000 -rate 5 -duration 20s
			;;
		storm10k) run "$s-$r" -ws 10000 -rate 10 -duration 20s -restart-cmd "$work/restart.sh" -restart-at 8s -grace 30s ;;
		*) echo "sitting.sh: unknown scenario $s" >&2; exit 2 ;;
		esac
	done
done
exit $failed
