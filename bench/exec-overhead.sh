#!/usr/bin/env bash
# Benchmark: `slipway exec` of a 10-step pipeline of `true` steps against 10 sequential
# `docker run --rm IMAGE true`, side by side in one run (hyperfine, alternating).
# Prints both means and their ratio. Target: ratio <= 1.10.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
prepare_machine
ensure_hyperfine
RUNS="${RUNS:-10}"
bin=$(build_release)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "kind: pipeline"
  echo "name: bench"
  echo "steps:"
  for i in $(seq 1 10); do
    printf '  - name: step-%s\n    image: %s\n    commands: ["true"]\n' "$i" "$SLIPWAY_BASE_IMAGE"
  done
} >"$work/.drone.yml"
git -C "$work" init -q -b main
git -C "$work" -c user.name=b -c user.email=b@example.invalid add -A
git -C "$work" -c user.name=b -c user.email=b@example.invalid commit -q -m bench

docker_loop="for i in 1 2 3 4 5 6 7 8 9 10; do docker run --rm $SLIPWAY_BASE_IMAGE true; done"
hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$work/result.json" \
  -n "docker run x10" "$docker_loop" \
  -n "slipway exec (10 steps)" "cd $work && $bin exec >/dev/null" >&2

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
d, s = r["docker run x10"], r["slipway exec (10 steps)"]
print(f"docker run x10:          {d['mean']:.3f} s ± {d['stddev']:.3f}")
print(f"slipway exec (10 steps): {s['mean']:.3f} s ± {s['stddev']:.3f}")
print(f"ratio slipway/docker:    {s['mean']/d['mean']:.3f}  (target <= 1.10)")
PY
