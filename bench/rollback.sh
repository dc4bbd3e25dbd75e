#!/usr/bin/env bash
# Benchmark: a rollback to the tenth-latest revision of a stack, after a registry GC run.
# Target: under 5 s, and no image pulled.
#
# - `slipway up` (SQLite, its edge proxy on 127.0.0.1 high ports, no Docker labels routing,
#   no ACME); `docker login` to its built-in registry with the admin token.
# - 12 images `FROM $SLIPWAY_BASE_IMAGE` with `ENV VERSION=v0` ... `v11`, pushed to the
#   built-in registry as team/web:v0 ... v11, and their local copies removed: the engine's
#   copies are the deployer's own pulls. v0 is never deployed.
# - A one-service stack (busybox `httpd` on 8080 answering `$VERSION`, 1 replica, no
#   health check, stop grace 2 s), deployed 11 times (`slipway stack deploy --wait`), each
#   time with the next image pinned by digest: revisions 1 to 11 run v1 to v11.
# - Each round: `slipway gc --keep-last 0 --untagged-older-than 0s --blob-grace 0s` (every
#   tag dropped: only what the last 10 revisions of a stack run is kept; not timed), then
#   `slipway stack rollback ENV/web --to N --wait` with N the tenth-latest revision (2, then
#   3, ...: every rollback is a new revision, so each round goes back to another image).
#   Its time: from just before that command until the edge proxy answers N's version
#   (the command exits 0 once the revision serves, old container stopped and removed; the
#   edge is then asked once, and polled every 10 ms should it not answer N's version yet).
#   The image pulls the engine reports (`docker events`, type=image, event=pull) of
#   team/web during the round are counted: any is a failure.
# - For reference, not a peer (no proxy, no switch, nothing stopped): the engine's own
#   floor, `docker run -d` of the same old image with the same command until its httpd
#   answers on the container's address (polled every 10 ms), then `docker rm -f`.
#   (Swarm's `docker service rollback` only goes back one revision and needs a swarm.)
# Prints each round and the medians of ROUNDS rounds (default 5, at most 9).
#
# SLIPWAY_BIN=path skips the release build; ROUNDS=5.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
ROUNDS="${ROUNDS:-5}"
case "$ROUNDS" in [1-9]) ;; *) echo "ROUNDS must be 1 to 9" >&2; exit 1 ;; esac
bin="${SLIPWAY_BIN:-$(build_release)}"
ADMIN="bench-$(random_hex 16)"
run="$(random_hex 4)"
ENV_NAME="bench$run"
REF_NAME="slipway-bench-ref-$run"

work=$(mktemp -d)
export DOCKER_CONFIG="$work/docker-config"
mkdir -p "$DOCKER_CONFIG"
pids=()
repo=""
cleanup() {
  stop_pids
  docker rm -f "$REF_NAME" >/dev/null 2>&1 || true
  docker ps -aq --filter "label=io.slipway.env=$ENV_NAME" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network ls -q --filter "label=io.slipway.env=$ENV_NAME" | xargs -r docker network rm >/dev/null 2>&1 || true
  if [ -n "$repo" ]; then
    docker images --digests --format '{{.Repository}} {{.ID}}' |
      awk -v r="$repo" '$1 == r {print $2}' | sort -u | xargs -r docker rmi -f >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- slipway up ---
start_up --proxy-http 127.0.0.1:0 --proxy-https 127.0.0.1:0 --no-docker-labels --no-acme || exit 1
edge=$(up_fact proxy_http)
registry="${url#http://}"
repo="$registry/team/web"
out=$("$bin" env add "$ENV_NAME" --domain apps.test --server "$url" --token "$ADMIN" 2>&1) ||
  { printf '%s\n' "$out" >&2; exit 1; }
docker login "$registry" -u admin -p "$ADMIN" >/dev/null 2>&1

# --- v0 ... v11 in the registry only ---
say "slipway up at $url (edge $edge); pushing 12 images to its registry"
for n in $(seq 0 11); do
  mkdir -p "$work/img-v$n"
  # The label keeps the builder's cache from sharing the image with anything else.
  printf 'FROM %s\nLABEL io.slipway.bench=%s\nENV VERSION=v%s\n' "$SLIPWAY_BASE_IMAGE" "$run" "$n" \
    >"$work/img-v$n/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$repo:v$n" "$work/img-v$n" >/dev/null 2>&1
  docker push -q "$repo:v$n" >/dev/null
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$repo:v$n" |
    grep -m1 "^$repo@" >>"$work/pinned"
  docker rmi "$repo:v$n" >/dev/null
done

say "11 revisions, then $ROUNDS rounds of registry GC + rollback to the tenth-latest revision"
python3 - "$bin" "$url" "$ADMIN" "$edge" "$ENV_NAME" "$repo" "$ROUNDS" "$work" "$REF_NAME" <<'PY'
import json, os, statistics, subprocess, sys, threading, time, urllib.request

binary, url, admin, edge, env, repo, rounds, work, ref_name = sys.argv[1:]
rounds = int(rounds)
TIMEOUT = 120  # seconds any one command may take
CMD = ("mkdir -p /www && echo \"$VERSION\" > /www/index.html; trap 'exit 0' TERM; "
       "httpd -f -p 8080 -h /www & wait")
pinned = open(os.path.join(work, "pinned")).read().split()
target = f"{env}/web"
api = ["--server", url, "--token", admin]

# --- the engine's pull events ---
pulls = []  # (timeNano, reference)
lock = threading.Lock()
events = subprocess.Popen(["docker", "events", "--filter", "type=image", "--filter",
                           "event=pull", "--format", "{{json .}}"],
                          stdout=subprocess.PIPE, text=True)

def read_events():
    for line in events.stdout:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        with lock:
            pulls.append((int(e.get("timeNano", 0)), e.get("id", "")))

threading.Thread(target=read_events, daemon=True).start()
time.sleep(0.5)  # let `docker events` subscribe

def pulls_since(t0):
    time.sleep(0.3)
    with lock:
        return [r for t, r in pulls if t >= t0 and r.startswith(repo)]

def sh(*args, timeout=TIMEOUT):
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... exited {out.returncode}:\n"
                         f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout

def through_edge():
    req = urllib.request.Request(f"http://{edge}/", headers={"Host": "web.apps.test"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode().strip()
    except Exception as e:
        return 0, str(e)

def wait_answer(get, want, t0, what):
    while True:
        if get() == (200, want):
            return (time.time_ns() - t0) / 1e9
        if (time.time_ns() - t0) / 1e9 > TIMEOUT:
            raise SystemExit(f"{what}: {want} not served within {TIMEOUT} s: {get()}")
        time.sleep(0.01)

stack_file = os.path.join(work, "stack.yml")

def deploy(image, want):
    with open(stack_file, "w") as f:
        f.write(f"""services:
  web:
    image: {image}
    command: {json.dumps(["sh", "-c", CMD.replace("$", "$$")])}
    expose: ["8080"]
    stop_grace_period: 2s
""")
    sh(binary, "stack", "deploy", target, "-f", stack_file, "--wait", *api)
    if through_edge() != (200, want):
        raise SystemExit(f"revision of {want}: the edge answers {through_edge()}")

def history():
    return json.loads(sh(binary, "stack", "history", target, "--json", *api))

def reference(image, want):
    """The engine's floor: docker run -d of the image until its httpd answers."""
    t0 = time.time_ns()
    sh("docker", "run", "-d", "--name", ref_name, image, "sh", "-c", CMD)
    ip = sh("docker", "inspect", "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", ref_name).strip()
    def get():
        try:
            with urllib.request.urlopen(f"http://{ip}:8080/", timeout=2) as r:
                return r.status, r.read().decode().strip()
        except Exception as e:
            return 0, str(e)
    took = wait_answer(get, want, t0, "docker run")
    sh("docker", "rm", "-f", ref_name)
    return took

try:
    for n in range(1, 12):
        deploy(pinned[n], f"v{n}")
    rows = []
    for i in range(rounds):
        h = history()
        latest = h[0]["number"]
        tenth = h[9]
        n = tenth["number"]
        image = tenth["images"]["web"]
        want = f"v{pinned.index(image)}"
        gc = json.loads(sh(binary, "gc", "--keep-last", "0", "--untagged-older-than", "0s",
                           "--blob-grace", "0s", "--json", *api))
        t0 = time.time_ns()
        out = subprocess.run([binary, "stack", "rollback", target, "--to", str(n), "--wait",
                              *api], capture_output=True, text=True, timeout=TIMEOUT)
        cli = (time.time_ns() - t0) / 1e9
        if out.returncode != 0:
            raise SystemExit(f"rollback to {n} exited {out.returncode}:\n"
                             f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
        served = wait_answer(through_edge, want, t0, f"rollback to {n}")
        pulled = pulls_since(t0)
        if pulled:
            raise SystemExit(f"rollback to {n} pulled {pulled}")
        ref = reference(image, want)
        rows.append((served, cli, ref))
        print(f"  {i + 1}: revision {latest} -> {n} ({want}; GC deleted"
              f" {len(gc['manifests'])} manifests, {len(gc['blobs'])} blobs)"
              f"   rollback until served {served:5.2f} s (CLI {cli:5.2f} s, 0 pulls)"
              f"   docker run until it answers {ref:5.2f} s", file=sys.stderr)
finally:
    events.terminate()
    events.wait()

med = [statistics.median(r[k] for r in rows) for k in range(3)]
print(f"rollback to the tenth-latest revision after a registry GC run, 1 replica"
      f" (median of {rounds} rounds):")
print(f"  slipway stack rollback --to N --wait, until served: {med[0]:5.2f} s"
      f" (target < 5 s; the CLI returns after {med[1]:.2f} s); image pulls: 0")
print(f"  for reference, docker run -d of that image until it answers: {med[2]:5.2f} s")
PY
