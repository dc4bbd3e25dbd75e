#!/usr/bin/env bash
# Benchmark: `slipway lint` of a generated 1,000-step pipeline file (whole process: start,
# read, substitute check, parse, validate, print). Target: under 50 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
ensure_hyperfine
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slipway-target}"
bin=$(build_release)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "kind: pipeline"
  echo "name: big"
  echo "steps:"
  for i in $(seq 1 1000); do
    printf '  - name: step-%s\n    image: busybox:${TAG=latest}\n    depends_on: [%s]\n    environment:\n      N: "%s"\n    commands:\n      - echo %s\n      - test -n "$${N}"\n    when:\n      branch: [main, release/*]\n' \
      "$i" "$([ "$i" -gt 1 ] && echo "step-$((i - 1))" || echo clone)" "$i" "$i"
  done
} >"$work/big.yml"
"$bin" lint "$work/big.yml"
hyperfine --style basic --warmup 3 --runs "${RUNS:-30}" --export-json "$work/result.json" \
  -n "slipway lint (1000 steps)" "$bin lint $work/big.yml" >&2
python3 - "$work/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(f"slipway lint, 1000 steps: {r['mean']*1000:.1f} ms ± {r['stddev']*1000:.1f} (target < 50 ms)")
PY
