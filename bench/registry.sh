#!/usr/bin/env bash
# Benchmark: Slipway's registry (`slipway registry`) against Debian's docker-registry
# (CNCF distribution 2.8, filesystem storage) side by side on loopback, in one run, with
# the real Docker client:
#   1. push of a ~200 MB image of 5 layers (FROM scratch + busybox, 5 x 40 MB random),
#   2. pull of it (local copies removed first),
#   3. push of 50 small images (busybox + one small unique layer each).
# Prints seconds for each, the ratio slipway/distribution, and the peak RSS (VmHWM) of both
# servers. Target: ratios <= 1.0, Slipway's RSS lower.
#
# distribution runs without auth (its stock config needs an htpasswd file); Slipway runs
# with its token auth, as in production, so it pays the token round trips.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
if ! command -v docker-registry >/dev/null 2>&1; then
  say "installing docker-registry"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker-registry >/dev/null
fi
bin=$(build_release)

LAYERS="${LAYERS:-5}"
LAYER_MB="${LAYER_MB:-40}"
SMALL="${SMALL:-50}"
TOKEN="bench-$(random_hex 16)"
id="$(random_hex 4)"
work=$(mktemp -d)
export DOCKER_CONFIG="$work/docker-config"
mkdir -p "$DOCKER_CONFIG"
pids=()
images=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ ${#images[@]} -gt 0 ]; then docker rmi -f "${images[@]}" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
wait_http() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://$1/v2/" && return 0
    sleep 0.1
  done
  echo "server at $1 did not start" >&2
  exit 1
}

# --- servers ---
dport=$(free_port)
mkdir -p "$work/distribution"
cat >"$work/distribution.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/distribution
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$dport
EOF
docker-registry serve "$work/distribution.yml" >"$work/distribution.log" 2>&1 &
dpid=$!
pids+=("$dpid")
D="127.0.0.1:$dport"

sport=$(free_port)
RUST_LOG=warn "$bin" registry --listen "127.0.0.1:$sport" --data-dir "$work/slipway" \
  --admin-token "$TOKEN" >"$work/slipway.log" 2>&1 &
spid=$!
pids+=("$spid")
S="127.0.0.1:$sport"
wait_http "$D"
wait_http "$S"
echo "$TOKEN" | docker login "$S" -u admin --password-stdin >/dev/null

# --- images ---
say "building the big image ($LAYERS x $LAYER_MB MB) and $SMALL small images"
ctx="$work/big"
mkdir -p "$ctx"
{
  echo "FROM $SLIPWAY_BASE_IMAGE"
  for i in $(seq 1 "$LAYERS"); do echo "RUN head -c $((LAYER_MB * 1024 * 1024)) /dev/urandom > /layer$i"; done
} >"$ctx/Dockerfile"
big="slipway-bench/big-$id:v1"
images+=("$big")
DOCKER_BUILDKIT=0 docker build -q -t "$big" "$ctx" >/dev/null
for reg in "$D" "$S"; do
  docker tag "$big" "$reg/bench/big-$id:v1"
  images+=("$reg/bench/big-$id:v1")
done
small_ctx="$work/small"
mkdir -p "$small_ctx"
printf 'FROM %s\nARG N\nRUN head -c 20000 /dev/urandom > /small && echo "$N" > /n\n' "$SLIPWAY_BASE_IMAGE" >"$small_ctx/Dockerfile"
for n in $(seq 1 "$SMALL"); do
  tag="slipway-bench/small-$id:$n"
  DOCKER_BUILDKIT=0 docker build -q --build-arg "N=$n" -t "$tag" "$small_ctx" >/dev/null
  images+=("$tag")
  for reg in "$D" "$S"; do
    docker tag "$tag" "$reg/bench/small-$id-$n:v1"
    images+=("$reg/bench/small-$id-$n:v1")
  done
done

declare -A t
timed() { # name command...
  local name=$1
  shift
  local a b
  a=$(now)
  "$@" >/dev/null
  b=$(now)
  t[$name]=$(python3 -c "print(f'{$b-$a:.2f}')")
  say "$name: ${t[$name]} s"
}
push_small() { # registry
  for n in $(seq 1 "$SMALL"); do docker push -q "$1/bench/small-$id-$n:v1" >/dev/null; done
}
pull_big() { docker pull -q "$1/bench/big-$id:v1"; }

# --- 1. push big (distribution first, then slipway) ---
timed push_big_distribution docker push -q "$D/bench/big-$id:v1"
timed push_big_slipway docker push -q "$S/bench/big-$id:v1"

# --- 2. pull big: remove every local copy of its layers before each pull ---
docker rmi "$big" "$D/bench/big-$id:v1" "$S/bench/big-$id:v1" >/dev/null
timed pull_big_slipway pull_big "$S"
docker rmi "$S/bench/big-$id:v1" >/dev/null
timed pull_big_distribution pull_big "$D"

# --- 3. 50 small pushes ---
timed push_small_distribution push_small "$D"
timed push_small_slipway push_small "$S"

hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_d=$(hwm "$dpid")
rss_s=$(hwm "$spid")

python3 - "${t[push_big_distribution]}" "${t[push_big_slipway]}" \
  "${t[pull_big_distribution]}" "${t[pull_big_slipway]}" \
  "${t[push_small_distribution]}" "${t[push_small_slipway]}" "$rss_d" "$rss_s" \
  "$LAYERS" "$LAYER_MB" "$SMALL" <<'PY'
import sys
v = sys.argv[1:]
pbd, pbs, lbd, lbs, psd, pss = map(float, v[:6])
rd, rs = int(v[6]), int(v[7])
layers, mb, small = v[8], v[9], v[10]
print(f"{'':34} {'distribution 2.8':>17} {'slipway':>10} {'ratio s/d':>10}")
for name, d, s in [
    (f"push {layers}x{mb} MB image (s)", pbd, pbs),
    (f"pull {layers}x{mb} MB image (s)", lbd, lbs),
    (f"push {small} small images (s)", psd, pss),
]:
    print(f"{name:34} {d:17.2f} {s:10.2f} {s/d:10.2f}")
print(f"{'peak RSS (VmHWM, MiB)':34} {rd/1024:17.1f} {rs/1024:10.1f} {rs/rd:10.2f}")
PY
