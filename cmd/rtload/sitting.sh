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
# TOOL_FLAGS adds rtload flags to every run (TOOL_FLAGS=-read-io-uring, say).
# TOOL_NICE runs rtload at that nice level (default 0, the gateway's own):
# at 19 the tool's readers take the CPU only when the gateway leaves it,
# standing in for clients on other machines.
#
# SPLIT=1 stands in for clients on another machine, on this one: the gateway
# gets CPU 0 to itself and everything else (rtload, PostgreSQL, the demo)
# CPU 1, and rtload runs in a network namespace of its own, joined to the
# gateway's by a veth pair whose ends each process what they receive on
# their own side's CPU (RPS). On loopback the sender's kernel does the
# receiver's work (waking its reader, finding its socket, its receive
# path), so the gateway's CPU would include its clients'; here each side
# does its own, as across a network (the gateway handles its clients'
# acknowledgements, which on loopback the clients' sends do). The gateway's
# GOMAXPROCS is then 1. Needs root, ip(8), taskset(1) and socat(1) (rtload's
# writer reaches the database, which listens on loopback only, through it),
# and 2 CPUs. The pair's addresses are 198.18.0.1 and .2 (198.18.0.0/15 is
# set aside for benchmarks, RFC 2544); where the machine already uses that
# range the script refuses to start.
# The storm is skipped: the tool finds the restarted gateway by its port.
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
split=${SPLIT:-0}
scenarios=${SCENARIOS:-"ws1k-100 ws1k-100-batch ws1k-300-batch ws5k-20 ws10k-10 ws19k-5 storm10k"}
out=${OUT:-$(mktemp -d /tmp/rtload-sitting-XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/rtload-sitting-bin-XXXXXX)
(cd "$repo" && go build -o "$work/gateway" ./cmd/gateway && go build -o "$work/rtload" ./cmd/rtload)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
files=$(ulimit -n)

export GATEWAY_MAX_CONNECTIONS=20000 GATEWAY_MAX_CONNECTIONS_PER_USER=20000 \
	GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=20000 GATEWAY_MAX_SSE_CLIENTS=2000

demo=""
relays=""
gw=""
ns=""
gw_host=127.0.0.1
gw_cpus=""
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
	for p in $demo $relays; do kill -TERM "$p" 2>/dev/null || true; done
	for p in $demo $relays; do wait "$p" 2>/dev/null || true; done
	[ -z "$ns" ] || ip netns delete "$ns" 2>/dev/null || true # takes the veth pair with it
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # exit runs cleanup

if [ "$split" = 1 ]; then
	for c in ip taskset socat; do
		command -v $c >/dev/null || { echo "sitting.sh: SPLIT=1 needs $c" >&2; exit 2; }
	done
	[ "$(nproc --all)" -ge 2 ] || { echo "sitting.sh: SPLIT=1 needs 2 CPUs" >&2; exit 2; }
	if ip -4 route show table all | grep -q '198\.1[89]\.'; then
		echo "sitting.sh: SPLIT=1 uses 198.18.0.0/30, which this machine already routes" >&2; exit 2
	fi
	ns=rtload-$$
	ip netns add "$ns"
	ip link add "rtgw$$" type veth peer name "rtcl$$" netns "$ns"
	ip addr add 198.18.0.1/30 dev "rtgw$$"
	ip link set "rtgw$$" up
	ip -n "$ns" addr add 198.18.0.2/30 dev "rtcl$$"
	ip -n "$ns" link set "rtcl$$" up
	ip -n "$ns" link set lo up
	# What each end receives is processed on its own side's CPU.
	echo 1 >"/sys/class/net/rtgw$$/queues/rx-0/rps_cpus"
	ip netns exec "$ns" sh -c "echo 2 >/sys/class/net/rtcl$$/queues/rx-0/rps_cpus"
	# One source address: ports enough for 19,000 clients, reused at once.
	ip netns exec "$ns" sysctl -q net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
	gw_host=198.18.0.1
	gw_cpus="taskset -c 0"
	taskset -pc 1 $$ >/dev/null # everything started from here on
fi

# The demo's gateway only holds the database; the measured one is started
# for each run, on its own port.
GATEWAY_ADDR=127.0.0.1:18180 GATEWAY_METRICS_ADDR=off setsid "$work/gateway" demo --every 0 >"$work/demo.log" 2>&1 &
demo=$!

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

tool_ns=""
if [ "$split" = 1 ]; then
	# The database listens on loopback: the tool's namespace gets a port
	# of the same number on its own loopback, relayed through a Unix socket.
	hostport=${db#*@}
	hostport=${hostport%%/*}
	dbport=${hostport##*:}
	socat "UNIX-LISTEN:$work/db.sock,fork" "TCP:$hostport" &
	relays=$!
	ip netns exec "$ns" socat "TCP-LISTEN:$dbport,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$work/db.sock" &
	relays="$relays $!"
	tool_ns="ip netns exec $ns"
	i=0
	until [ -S "$work/db.sock" ] && ip netns exec "$ns" ss -Hltn "sport = :$dbport" | grep -q .; do
		i=$((i + 1)); [ $i -lt 100 ] || { echo "sitting.sh: the database relay did not start" >&2; exit 1; }
		sleep 0.05
	done
fi

# start.sh starts a gateway on the measured port and returns once it is
# ready; restart.sh (the storm's -restart-cmd) stops the running one first.
cat >"$work/start.sh" <<EOF
#!/bin/sh
DATABASE_URL='$db' GATEWAY_ADDR=$gw_host:18190 GATEWAY_METRICS_ADDR=$gw_host:18191 \\
GATEWAY_INSECURE_NO_AUTH=true GATEWAY_LOG_LEVEL=warn \\
	setsid $gw_cpus '$work/gateway' serve >>'$out/gateway.log' 2>&1 </dev/null &
echo \$! >'$work/gateway.pid'
i=0
until curl -sf http://$gw_host:18190/readyz >/dev/null; do
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
		$tool_ns "$@"
		return
	fi
	setsid -w sh -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"' "$tool_nice" $tool_ns "$@"
}

failed=0
run() { # name, rtload flags...
	name=$1
	shift
	"$work/start.sh"
	gw=$(cat "$work/gateway.pid")
	status=0
	pid_flag="" # rtload finds a gateway on loopback by its port, and the storm's next one too
	[ "$split" != 1 ] || pid_flag="-pid $gw"
	tool "$work/rtload" -url "http://$gw_host:18190" -metrics-url "http://$gw_host:18191/metrics" $pid_flag -db "$db" ${TOOL_FLAGS:-} "$@" \
		>"$out/$name.txt" 2>"$out/$name.err" || status=$?
	# The storm's restart left another process than the one started here.
	gw=$(cat "$work/gateway.pid")
	stop_gateway
	echo "== $name $(date +%T)$( [ $status = 0 ] || echo " FAILED (status $status, see $out/$name.err)")"
	grep -E '^(machine|deliveries|latency|  +commit to the gateway|storm|gateway|tool CPU)' "$out/$name.txt" || true
	[ $status = 0 ] || failed=1
}

echo "sitting: $(nproc --all) CPUs$( [ "$split" != 1 ] || echo " (split: the gateway on CPU 0, the rest on CPU 1, the tool behind veth)"), $files open files per process, rtload at nice $tool_nice, reports in $out"
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
		storm10k)
			if [ "$split" = 1 ]; then
				echo "== $s-$r skipped: not with SPLIT=1"
				continue
			fi
			run "$s-$r" -ws 10000 -rate 10 -duration 20s -restart-cmd "$work/restart.sh" -restart-at 8s -grace 30s ;;
		*) echo "sitting.sh: unknown scenario $s" >&2; exit 2 ;;
		esac
	done
done
exit $failed
