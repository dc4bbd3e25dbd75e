#!/usr/bin/env bash
# Benchmark: a signed GitHub push webhook to `slipway up` -> the first step's container
# started, against the bare start of the same container, side by side in one run.
#
# - A local bare repository (file://) with N+1 commits on main; commit i holds a pipeline
#   named `hook-<run>-<i>` (clone disabled, one step `true` in the busybox image), so each
#   build's container is told apart by its `io.slipway.pipeline` label.
# - `slipway up` on 127.0.0.1 (SQLite, the embedded runner), the repository added with
#   `slipway repo add --provider github`; one warm-up delivery (the first one clones the
#   server's mirror), then N deliveries, one at a time, each waited for until its build
#   has finished.
# - Slipway's latency: from just before the webhook POST is sent to the `start` event Docker
#   reports for that build's step container (`docker events`, nanosecond `timeNano`; same
#   host, same clock). Includes the mirror fetch, the pipeline file read and compile, the
#   store, the runner's long poll, the engine's network and container create, the start.
# - Bare container start, interleaved with the deliveries: from just before
#   `POST /containers/create` on the Docker socket (what the engine calls) to the `start`
#   event of that container (`AutoRemove`, like `docker run --rm IMAGE true`); and, for
#   reference, the same with the `docker run --rm` CLI.
# Prints the median and p90 of Slipway's latency, the median bare start and the difference.
# Target: the difference (Slipway median - bare API median) under 250 ms.
#
# SLIPWAY_BIN=path skips the release build (a binary built elsewhere); N=20 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
bin="${SLIPWAY_BIN:-$(build_release)}"
N="${N:-20}"
ADMIN="bench-$(random_hex 16)"
run="$(random_hex 4)"

work=$(mktemp -d)
pids=()
cleanup() {
  stop_pids
  # Anything of this run left in Docker (the bench's own containers carry io.slipway.bench).
  docker ps -aq --filter "label=io.slipway.bench=$run" | xargs -r docker rm -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- the repository: N+1 commits, each a differently named pipeline ---
src="$work/src"
git init -q -b main "$src"
for i in $(seq 0 "$N"); do
  printf 'kind: pipeline\nname: hook-%s-%s\nclone:\n  disable: true\nsteps:\n- name: run\n  image: %s\n  commands: ["true"]\n' \
    "$run" "$i" "$SLIPWAY_BASE_IMAGE" >"$src/.drone.yml"
  git -C "$src" add -A
  git -C "$src" -c user.name=b -c user.email=b@example.invalid commit -q -m "bench $i"
  git -C "$src" rev-parse HEAD >>"$work/commits"
done
git clone -q --bare "$src" "$work/app.git"

# --- slipway up ---
start_up --no-proxy || exit 1
secret=$("$bin" repo add bench/app --clone-url "file://$work/app.git" --provider github \
  --server "$url" --token "$ADMIN" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["webhook_secret"])')
say "slipway up at $url; $N deliveries (plus one warm-up)"

python3 - "$url" "$ADMIN" "$secret" "$run" "$N" "$work/commits" "$SLIPWAY_BASE_IMAGE" <<'PY'
import hashlib, hmac, http.client, json, socket, statistics, subprocess, sys, threading, time
import urllib.request

url, admin, secret, run, n, commits_file, image = sys.argv[1:]
n = int(n)
commits = open(commits_file).read().split()

# --- Docker's start events, by container labels ---
started = {}  # key -> timeNano of the container's start
created = {}  # key -> timeNano of the container's create; "net:NAME" -> network create
cond = threading.Condition()
events = subprocess.Popen(
    ["docker", "events", "--filter", "type=container", "--filter", "type=network",
     "--filter", "event=start", "--filter", "event=create", "--format", "{{json .}}"],
    stdout=subprocess.PIPE, text=True)

def read_events():
    for line in events.stdout:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        a = e.get("Actor", {}).get("Attributes", {})
        if e.get("Type") == "network":
            with cond:
                created["net:" + a.get("name", "")] = int(e["timeNano"])
            continue
        key = None
        if a.get("io.slipway.managed") == "true" and a.get("io.slipway.step") == "run":
            key = a.get("io.slipway.pipeline")
        elif a.get("io.slipway.bench") == run:
            key = a.get("io.slipway.bench.key")
        if not key:
            continue
        with cond:
            if e.get("Action") == "create":
                # The engine names a step's container `<its network>-s<N>-<step>`.
                created[key] = (int(e["timeNano"]), a.get("name", "").rsplit("-s", 1)[0])
            else:
                started[key] = int(e["timeNano"])
            cond.notify_all()

threading.Thread(target=read_events, daemon=True).start()
time.sleep(0.5)  # let `docker events` subscribe

def wait_start(key, timeout=60):
    deadline = time.time() + timeout
    with cond:
        while key not in started:
            left = deadline - time.time()
            if left <= 0:
                raise SystemExit(f"no start event for {key}")
            cond.wait(left)
        return started[key]

# --- the Docker API over its socket, as the engine uses it ---
class UnixConnection(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=60)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/var/run/docker.sock")

def docker_api(method, path, body=None):
    c = UnixConnection()
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise SystemExit(f"docker {method} {path}: {r.status} {data[:300]!r}")
    return json.loads(data) if data else None

def bare_api(i):
    key = f"api-{i}"
    t0 = time.time_ns()
    c = docker_api("POST", "/containers/create", {
        "Image": image, "Cmd": ["true"],
        "Labels": {"io.slipway.bench": run, "io.slipway.bench.key": key},
        "HostConfig": {"AutoRemove": True}})
    docker_api("POST", f"/containers/{c['Id']}/start")
    return (wait_start(key) - t0) / 1e6

def bare_cli(i):
    key = f"cli-{i}"
    t0 = time.time_ns()
    subprocess.run(["docker", "run", "--rm", "--label", f"io.slipway.bench={run}",
                    "--label", f"io.slipway.bench.key={key}", image, "true"], check=True)
    return (wait_start(key) - t0) / 1e6

# --- webhooks ---
def push_body(i):
    sha, before = commits[i], (commits[i - 1] if i else "0" * 40)
    repo = "bench/app"
    commit = {"id": sha, "tree_id": sha, "distinct": True, "message": f"bench {i}",
              "timestamp": "2026-12-01T10:00:00Z",
              "url": f"https://github.com/{repo}/commit/{sha}",
              "author": {"name": "b", "email": "b@example.invalid", "username": "b"},
              "committer": {"name": "b", "email": "b@example.invalid", "username": "b"},
              "added": [], "removed": [], "modified": [".drone.yml"]}
    return json.dumps({
        "ref": "refs/heads/main", "before": before, "after": sha,
        "created": False, "deleted": False, "forced": False, "base_ref": None,
        "compare": f"https://github.com/{repo}/compare/{before}...{sha}",
        "commits": [commit], "head_commit": commit,
        "repository": {"id": 1, "name": "app", "full_name": repo, "private": True,
                       "owner": {"login": "bench", "name": "bench"},
                       "html_url": f"https://github.com/{repo}", "clone_url": "file:///x",
                       "ssh_url": f"git@github.com:{repo}.git",
                       "default_branch": "main", "master_branch": "main"},
        "pusher": {"name": "b", "email": "b@example.invalid"},
        "sender": {"login": "b", "id": 2}}).encode()

def api_get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)

def deliver(i):
    body = push_body(i)
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(url + "/hook", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": f"{run}-{i}", "X-Hub-Signature-256": sig,
        "User-Agent": "GitHub-Hookshot/bench"})
    t0 = time.time_ns()
    with urllib.request.urlopen(req, timeout=30) as r:
        answer = json.load(r)
    t_answer = time.time_ns()
    key = f"hook-{run}-{i}"
    latency = (wait_start(key) - t0) / 1e6
    number = answer["build"]
    deadline = time.time() + 60
    while True:
        b = api_get(f"/api/repos/bench/app/builds/{number}")
        if b["status"] not in ("pending", "running"):
            break
        if time.time() > deadline:
            raise SystemExit(f"build #{number} still {b['status']}")
        time.sleep(0.05)
    if b["status"] != "success":
        raise SystemExit(f"build #{number} ended {b['status']}: {b.get('error')}")
    time.sleep(0.3)  # let the engine remove the container and network
    # Where the time went: the 201 answer (mirror fetch, compile, store), the lease (the
    # stage's `started`, server clock in ms), the container's start.
    leased = b["stages"][0]["started"] - t0 / 1e6
    with cond:
        c_ns, network = created.get(key, (0, ""))
        n_ns = created.get("net:" + network, 0)
    return latency, (t_answer - t0) / 1e6, leased, (n_ns - t0) / 1e6, (c_ns - t0) / 1e6

try:
    deliver(0)  # warm-up: clones the mirror, first lease
    bare_api(0)
    hook, api, cli, steps = [], [], [], []
    for i in range(1, n + 1):
        api.append(bare_api(i))
        cli.append(bare_cli(i))
        latency, *phases = deliver(i)
        hook.append(latency)
        steps.append(phases)
        print(f"  {i:2}: webhook->start {latency:6.1f} ms (201 {phases[0]:5.1f}, leased"
              f" {phases[1]:5.1f}, network created {phases[2]:5.1f}, container created"
              f" {phases[3]:5.1f})   bare API start {api[-1]:6.1f} ms   docker run start"
              f" {cli[-1]:6.1f} ms", file=sys.stderr)
finally:
    events.terminate()
    events.wait()

def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]

mh, ma, mc = statistics.median(hook), statistics.median(api), statistics.median(cli)
print(f"webhook -> first step container started (n={n}): median {mh:.1f} ms, p90 {p90(hook):.1f} ms")
print(f"bare container start, API create+start:     median {ma:.1f} ms, p90 {p90(api):.1f} ms")
print(f"bare container start, docker run --rm CLI:  median {mc:.1f} ms (for reference)")
med = [statistics.median(p[k] for p in steps) for k in range(4)]
print(f"  where (median ms after the POST): 201 answer {med[0]:.1f}, stage leased {med[1]:.1f},"
      f" network created {med[2]:.1f}, container created {med[3]:.1f}, started {mh:.1f}")
print(f"Slipway beyond the container start: {mh:.1f} - {ma:.1f} = {mh - ma:.1f} ms (target < 250 ms)")
PY
