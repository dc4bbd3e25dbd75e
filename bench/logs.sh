#!/usr/bin/env bash
# Benchmark: collecting a 1,000,000-line burst from one container, Slipway's collector
# against `docker logs -f` of the same container into /dev/null, side by side in one run;
# Slipway's peak memory while it collects; its delivery rate to rsyslog over TCP; and a
# search over the million stored lines.
#
# - The container (json-file driver, label `slipway.logs=true`): busybox awk writes
#   1,000,000 numbered lines of about 60 bytes as fast as it can, then it idles (it keeps
#   running: Slipway follows running containers). Both sides read the same written log, so
#   both measure reading and keeping it, not the writer.
# - `docker logs --timestamps C > /dev/null` (Slipway asks for timestamps too): its wall
#   time. It is `docker logs -f` without the wait for more once the log is read (the
#   container runs on, so `-f` would not return).
# - Slipway: `slipway up --no-proxy` on a fresh data dir, started once the burst is written;
#   its time runs from its start-up line to /metrics counting 1,000,000 records collected
#   (committed to the store, checkpoint written), polled every 20 ms. Its peak RSS
#   (`VmHWM`) is read at the end. Target: ratio <= 1.2, RSS under 100 MB.
# - The same again with `--log-route syslog+tcp://127.0.0.1:P` to Debian's rsyslogd
#   (imtcp, writing each message to a file): the time until rsyslog's file has every
#   line, as records per second.
# - Search: `slipway logs -/-/C --since 24h --grep 'line 0999999 '` (one hit among the
#   million), wall time of the CLI, ROUNDS times (target well under a second).
# Prints medians of ROUNDS rounds (default 5). SLIPWAY_BIN=path skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
ROUNDS="${ROUNDS:-5}"
LINES=1000000
case "$ROUNDS" in '' | *[!0-9]* | 0) echo "ROUNDS must be a positive number" >&2; exit 1 ;; esac
if [ ! -x /usr/sbin/rsyslogd ]; then
  say "installing rsyslog"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rsyslog >/dev/null
fi
bin="${SLIPWAY_BIN:-$(build_release)}"
ADMIN="bench-$(random_hex 16)"
run="$(random_hex 4)"
C="slipway-bench-logs-$run"
work="$(mktemp -d)"
pids=()
cleanup() {
  stop_pids
  docker rm -f "$C" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "writing the burst: $LINES lines"
docker run -d --name "$C" --label slipway.logs=true --log-driver json-file "$SLIPWAY_BASE_IMAGE" \
  sh -c "awk 'BEGIN { for (i = 1; i <= $LINES; i++) printf \"line %07d of the burst, some text to make it sixty\\n\", i }'; touch /written; while true; do sleep 3600; done" >/dev/null
until docker exec "$C" test -f /written 2>/dev/null; do sleep 0.5; done

now() { date +%s.%N; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
collected() {
  curl -sf "$url/metrics" | awk -v c="$C" '$1 ~ "^slipway_service_log_records_total" && index($1, c) { n += $2 } END { print n + 0 }'
}

# One round of Slipway on a fresh data dir (args: extra `slipway up` arguments): sets
# `secs` and `peak` (KiB), and leaves the server running (`stop_up`).
slipway_round() {
  rm -rf "$work/data" "$work/up.out"
  local t0 t1
  start_up --no-proxy "$@"
  t0=$(now)
  until [ "$(collected)" -ge "$LINES" ]; do sleep 0.02; done
  t1=$(now)
  peak=$(awk '/VmHWM/ { print $2 }' "/proc/$up_pid/status")
  secs=$(echo "$t1 - $t0" | bc -l)
}

stop_up() {
  kill "$up_pid" 2>/dev/null || true
  wait "$up_pid" 2>/dev/null || true
  exec 3<&-
}

docker_times=() slipway_times=() rss=()
for round in $(seq "$ROUNDS"); do
  t0=$(now)
  docker logs --timestamps "$C" >/dev/null 2>&1
  t1=$(now)
  docker_times+=("$(echo "$t1 - $t0" | bc -l)")
  slipway_round
  stop_up
  slipway_times+=("$secs")
  rss+=("$peak")
  say "round $round: docker logs ${docker_times[-1]} s, slipway $secs s, peak RSS $((peak / 1024)) MiB"
done

# Delivery to rsyslog over TCP.
port=$(free_port)
mkdir -p "$work/rsyslog"
cat >"$work/rsyslog.conf" <<EOF
global(workDirectory="$work/rsyslog" maxMessageSize="64k")
module(load="imtcp")
template(name="message" type="string" string="%msg%\n")
ruleset(name="bench") { action(type="omfile" file="$work/rsyslog/out.log" template="message" asyncWriting="on" ioBufferSize="256k" flushOnTXEnd="off") }
input(type="imtcp" port="$port" address="127.0.0.1" ruleset="bench")
EOF
/usr/sbin/rsyslogd -n -f "$work/rsyslog.conf" -i "$work/rsyslog/pid" &
pids+=("$!")
until (exec 4<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
rm -rf "$work/data" "$work/up.out"
start_up --no-proxy --log-route "syslog+tcp://127.0.0.1:$port"
t0=$(now)
until [ -f "$work/rsyslog/out.log" ] && [ "$(wc -l <"$work/rsyslog/out.log")" -ge "$LINES" ]; do sleep 0.1; done
t1=$(now)
relay=$(echo "$LINES / ($t1 - $t0)" | bc -l)

# Search over the stored million (this last server's store).
until [ "$(collected)" -ge "$LINES" ]; do sleep 0.05; done
search_times=()
for round in $(seq "$ROUNDS"); do
  t0=$(now)
  hits=$("$bin" logs --since 24h --grep 'line 0999999 ' --json --server "$url" --token "$ADMIN" -- "-/-/$C" | wc -l)
  t1=$(now)
  [ "$hits" = 1 ] || { echo "the search found $hits records, want 1" >&2; exit 1; }
  search_times+=("$(echo "$t1 - $t0" | bc -l)")
done
stop_up

d=$(printf '%s\n' "${docker_times[@]}" | median)
s=$(printf '%s\n' "${slipway_times[@]}" | median)
r=$(printf '%s\n' "${rss[@]}" | median)
q=$(printf '%s\n' "${search_times[@]}" | median)
printf '\nservice logs, %d lines, median of %d rounds:\n' "$LINES" "$ROUNDS"
printf '  docker logs:           %6.2f s\n' "$d"
printf '  slipway collects:      %6.2f s   ratio %.2f (target <= 1.2)\n' "$s" "$(echo "$s / $d" | bc -l)"
printf '  slipway peak RSS:      %6d MiB (target < 100)\n' "$((r / 1024))"
printf '  to rsyslog over TCP:   %8.0f records/s\n' "$relay"
printf '  search of 1M records:  %6.3f s (the CLI, one hit)\n' "$q"
