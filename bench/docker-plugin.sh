#!/usr/bin/env bash
# Benchmark: the native `plugins/docker` step (`slipway exec` of a one-step pipeline) against
# `docker build` + `docker push` by hand, same context, same registry (`slipway registry` on
# loopback, token auth), side by side in one run (hyperfine, alternating).
#
# The context is a Dockerfile `FROM <base image>` + `COPY payload.bin` with a fresh random
# payload (PAYLOAD_MB, default 20 MB) before every run, so each run really builds and pushes
# one new layer on top of cached base layers, as a CI build of a changed app does. The
# native step runs with `auto_label: false` so that both build exactly the same Dockerfile
# (labels are extra builder steps); `.git` is in the context's `.dockerignore`. Prints the means, the step's own duration (from
# `--json`), and the ratios. Target: the native step / by hand <= 1.10 (the whole `slipway
# exec` run adds process start, the clone and the final sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
ensure_hyperfine
RUNS="${RUNS:-10}"
PAYLOAD_MB="${PAYLOAD_MB:-20}"
bin=$(build_release)

TOKEN="bench-$(random_hex 16)"
work=$(mktemp -d)
export DOCKER_CONFIG="$work/docker-config"
mkdir -p "$DOCKER_CONFIG"
registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  docker rmi -f "$host/bench/native:latest" "$host/bench/manual:latest" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
host="127.0.0.1:$port"
RUST_LOG=warn "$bin" registry --listen "$host" --data-dir "$work/registry" \
  --admin-token "$TOKEN" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://$host/v2/" && break
  sleep 0.1
done
docker login -u admin --password-stdin "$host" <<<"$TOKEN" >/dev/null 2>&1

# One repository for both: the native pipeline and the hand-made build share its context.
repo="$work/app"
mkdir -p "$repo"
cat >"$repo/Dockerfile" <<DOCKERFILE
FROM $SLIPWAY_BASE_IMAGE
COPY payload.bin /payload.bin
DOCKERFILE
cat >"$repo/.drone.yml" <<PIPELINE
kind: pipeline
name: bench
steps:
  - name: image
    image: plugins/docker
    settings:
      registry: $host
      repo: $host/bench/native
      tags: latest
      auto_label: false
      username: admin
      password:
        from_secret: registry_token
PIPELINE
printf '.git\n.drone.yml\n' >"$repo/.dockerignore"
git -C "$repo" init -q -b main
commit() {
  git -C "$repo" -c user.name=b -c user.email=b@example.invalid add -A
  git -C "$repo" -c user.name=b -c user.email=b@example.invalid commit -q -m bench
}
payload="head -c $((PAYLOAD_MB * 1024 * 1024)) /dev/urandom >$repo/payload.bin"
eval "$payload"
commit

# Warm both paths once (base image layers into the registry, builder cache).
(cd "$repo" && "$bin" exec --trusted --secret "registry_token=$TOKEN" >/dev/null)
(cd "$repo" && docker build -q -t "$host/bench/manual:latest" . >/dev/null && docker push -q "$host/bench/manual:latest" >/dev/null)

native="cd $repo && $bin exec --trusted --json --secret registry_token=$TOKEN >>$work/native.jsonl"
manual="cd $repo && docker build -q -t $host/bench/manual:latest . >/dev/null && docker push -q $host/bench/manual:latest >/dev/null"
# The payload is amended into the one commit and the old one dropped, so the clone
# `slipway exec` makes stays one payload big whatever the number of runs.
prepare_native="$payload && cd $repo && git -c user.name=b -c user.email=b@example.invalid commit -q --amend -a -m bench && git reflog expire --expire=now --all && git gc -q --prune=now"
hyperfine --style basic --runs "$RUNS" --export-json "$work/result.json" \
  --prepare "$payload" -n "docker build + push" "$manual" \
  --prepare "$prepare_native" -n "slipway exec (native plugins/docker)" "$native" >&2

python3 - "$work/result.json" "$work/native.jsonl" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
m, n = r["docker build + push"], r["slipway exec (native plugins/docker)"]
steps = []
for line in open(sys.argv[2]):
    e = json.loads(line)
    if e.get("type") == "step_finished" and e.get("step") == "image":
        if e.get("status") != "success":
            sys.exit(f"native step failed: {e}")
        steps.append(e["duration"] / 1000)
step = sum(steps) / len(steps)
print(f"docker build + push (by hand):         {m['mean']:.3f} s ± {m['stddev']:.3f}")
print(f"slipway exec, native plugins/docker:   {n['mean']:.3f} s ± {n['stddev']:.3f}")
print(f"  of which the step itself:            {step:.3f} s")
print(f"ratio slipway exec / by hand:          {n['mean']/m['mean']:.3f}")
print(f"ratio native step / by hand:           {step/m['mean']:.3f}  (target <= 1.10)")
PY
