#!/usr/bin/env bash
# Benchmark: a rolling update of a 4-replica service to a new image, Slipway's deployer
# against Docker Swarm's, side by side in one run (one at a time, never both at once).
#
# - Two local images, `FROM $SLIPWAY_BASE_IMAGE` with `ENV VERSION=v1` / `v2` (no registry:
#   the engine has them, Swarm is told `--no-resolve-image`). The service, the same on
#   both sides: busybox `httpd` on 8080 answering `$VERSION`, 4 replicas, the health check
#   `wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1` every 1 s (timeout 2 s,
#   1 retry, no start period), stop grace 2 s, update parallelism PARALLELISM (default 1,
#   Swarm's default), start-first, no delay, rollback on failure.
# - Slipway: `slipway up` (SQLite, its edge proxy on 127.0.0.1 high ports, no Docker labels
#   routing, no ACME), an environment, the stack deployed once (v1), then each round
#   `slipway stack deploy ENV/shop -f FILE --wait` of the other image. Its time: the wall
#   time of that command (it exits 0 when the revision serves, old containers stopped and
#   removed); the edge proxy then answers the new version.
# - Swarm: a single-node swarm on 127.0.0.1 (`--default-addr-pool 10.231.0.0/16`) made for
#   this run and left at its end; `docker service create` once (v1), then each round
#   `docker service update --image NEW ...` (no `--detach`: it waits). Its time: from just
#   before that command until every desired-running task runs the new image and is
#   running (Swarm reports `running` only once the health check passed) and no container
#   of the old image still runs, polled on the Docker socket every 50 ms. The CLI's own
#   wall time (it also waits `--update-monitor`, SWARM_MONITOR, default Swarm's 5s, to call
#   the tasks stable) and `UpdateStatus.State` = `completed` are checked after.
# - Rounds alternate v1->v2 and v2->v1, each side first in every other round.
# - Overhead beyond the containers: a side's time minus, for each batch (the new
#   containers by start time, PARALLELISM at a time), the start->healthy time of its
#   slowest container (`docker events`: `start` and `health_status: healthy`, timeNano);
#   and, for Swarm, the same from each container's `create` (so the engine's create and
#   start are not counted either). Slipway creates a batch's containers while the one
#   before is gated, so its create->healthy spans batches and is not summed; instead its
#   own time is also given beyond the engine's start calls (each container's
#   `container_started.engine_ms` in the revision's rollout steps: the wait for dockerd to
#   start it, about 0.3 s here, before Docker's `start` event).
# Prints the medians of ROUNDS rounds (default 10): Slipway's time, Swarm's, the ratio
# (target <= 1.0) and Slipway's overhead (target under 1 s).
#
# An active swarm on this engine is never touched: the script stops if there is one.
# SLIPWAY_BIN=path skips the release build; ROUNDS=10, PARALLELISM=1, SWARM_MONITOR=5s.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
ROUNDS="${ROUNDS:-10}"
PARALLELISM="${PARALLELISM:-1}"
SWARM_MONITOR="${SWARM_MONITOR:-5s}"
case "$PARALLELISM" in 1 | 2 | 3 | 4) ;; *) echo "PARALLELISM must be 1 to 4" >&2; exit 1 ;; esac
case "$ROUNDS" in '' | *[!0-9]* | 0) echo "ROUNDS must be a positive number" >&2; exit 1 ;; esac
swarm_state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$swarm_state" != inactive ]; then
  echo "this Docker engine's swarm is $swarm_state: the benchmark makes (and leaves) a swarm" \
    "of its own, so it stops here rather than touch that one" >&2
  exit 1
fi
bin="${SLIPWAY_BIN:-$(build_release)}"
ADMIN="bench-$(random_hex 16)"
run="$(random_hex 4)"
ENV_NAME="bench$run"
SERVICE="slipway-bench-$run"
IMG1="slipway-bench/web:v1-$run"
IMG2="slipway-bench/web:v2-$run"

work=$(mktemp -d)
pids=()
swarm_ours=0
gwbridge_before=0
docker network inspect docker_gwbridge >/dev/null 2>&1 && gwbridge_before=1
cleanup() {
  stop_pids
  docker ps -aq --filter "label=io.slipway.env=$ENV_NAME" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network ls -q --filter "label=io.slipway.env=$ENV_NAME" | xargs -r docker network rm >/dev/null 2>&1 || true
  if [ "$swarm_ours" = 1 ]; then
    docker service rm "$SERVICE" >/dev/null 2>&1 || true
    docker swarm leave --force >/dev/null 2>&1 || true
    docker ps -aq --filter "label=com.docker.swarm.service.name=$SERVICE" | xargs -r docker rm -f >/dev/null 2>&1 || true
    if [ "$gwbridge_before" = 0 ]; then docker network rm docker_gwbridge >/dev/null 2>&1 || true; fi
  fi
  docker rmi "$IMG1" "$IMG2" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- the two versions of the image ---
for v in v1 v2; do
  mkdir -p "$work/img-$v"
  printf 'FROM %s\nENV VERSION=%s\n' "$SLIPWAY_BASE_IMAGE" "$v" >"$work/img-$v/Dockerfile"
done
DOCKER_BUILDKIT=0 docker build -q -t "$IMG1" "$work/img-v1" >/dev/null 2>&1
DOCKER_BUILDKIT=0 docker build -q -t "$IMG2" "$work/img-v2" >/dev/null 2>&1

# --- slipway up ---
start_up --proxy-http 127.0.0.1:0 --proxy-https 127.0.0.1:0 --no-docker-labels --no-acme || exit 1
edge=$(up_fact proxy_http)
out=$("$bin" env add "$ENV_NAME" --domain apps.test --server "$url" --token "$ADMIN" 2>&1) ||
  { printf '%s\n' "$out" >&2; exit 1; }

# --- the swarm ---
swarm_ours=1
docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 \
  --default-addr-pool 10.231.0.0/16 >/dev/null
say "slipway up at $url (edge $edge), a swarm on 127.0.0.1; $ROUNDS rounds, parallelism $PARALLELISM"

python3 - "$bin" "$url" "$ADMIN" "$edge" "$ENV_NAME" "$SERVICE" "$IMG1" "$IMG2" "$ROUNDS" \
  "$PARALLELISM" "$SWARM_MONITOR" "$work" "$run" <<'PY'
import http.client, json, os, re, socket, statistics, subprocess, sys, threading, time
import urllib.parse, urllib.request

(binary, url, admin, edge, env, service, img1, img2, rounds, par, monitor, work,
 run) = sys.argv[1:]
rounds, par = int(rounds), int(par)
REPLICAS = 4
TIMEOUT = 180  # seconds any one deploy or update may take
CMD = ("mkdir -p /www && echo \"$VERSION\" > /www/index.html; trap 'exit 0' TERM; "
       "httpd -f -p 8080 -h /www & wait")
HEALTH = "wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1"
version = {img1: "v1", img2: "v2"}

# --- Docker's container events: create, start, health_status: healthy ---
seen = []  # (timeNano, action, container id, attributes)
cond = threading.Condition()
events = subprocess.Popen(["docker", "events", "--filter", "type=container",
                           "--format", "{{json .}}"], stdout=subprocess.PIPE, text=True)

def read_events():
    for line in events.stdout:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        action = e.get("Action", "")
        if action not in ("create", "start", "health_status: healthy"):
            continue
        with cond:
            seen.append((int(e["timeNano"]), action, e.get("id", ""),
                         e.get("Actor", {}).get("Attributes", {})))
            cond.notify_all()

threading.Thread(target=read_events, daemon=True).start()
time.sleep(0.5)  # let `docker events` subscribe

def batches_start_to_healthy(mine, since_ns, what):
    """For the new containers (mine(attrs) true) started after since_ns: the sums over
    batches of PARALLELISM (by start time) of the slowest start->healthy and of the
    slowest create->healthy, in seconds."""
    deadline = time.time() + 10
    while True:
        with cond:
            starts = {c: t for t, a, c, at in seen if a == "start" and t >= since_ns and mine(at)}
            healthy, created = {}, {}
            for t, a, c, at in seen:
                if a == "health_status: healthy" and c in starts and c not in healthy:
                    healthy[c] = t
                if a == "create" and c in starts:
                    created[c] = t
        if len(starts) >= REPLICAS and all(c in healthy for c in starts):
            break
        if time.time() > deadline:
            raise SystemExit(f"{what}: {len(starts)} new containers started, "
                             f"{len(healthy)} reported healthy")
        time.sleep(0.1)
    order = sorted(starts, key=starts.get)
    if len(order) != REPLICAS:
        raise SystemExit(f"{what}: {len(order)} new containers, not {REPLICAS}")
    total = total_created = 0.0
    for i in range(0, REPLICAS, par):
        batch = order[i:i + par]
        total += max(healthy[c] - starts[c] for c in batch) / 1e9
        total_created += max(healthy[c] - created.get(c, starts[c]) for c in batch) / 1e9
    return total, total_created

# --- the Docker API over its socket (the swarm's tasks, polled) ---
class UnixConnection(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=30)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/var/run/docker.sock")

def docker_get(path, filters):
    c = UnixConnection()
    c.request("GET", path + "?filters=" + urllib.parse.quote(json.dumps(filters)))
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise SystemExit(f"docker GET {path}: {r.status} {data[:300]!r}")
    return json.loads(data)

def swarm_converged(image):
    tasks = docker_get("/tasks", {"service": [service], "desired-state": ["running"]})
    if len(tasks) != REPLICAS or any(
            t["Spec"]["ContainerSpec"]["Image"] != image or t["Status"]["State"] != "running"
            for t in tasks):
        return False
    running = docker_get("/containers/json",
                         {"label": [f"com.docker.swarm.service.name={service}"]})
    return len(running) == REPLICAS and all(c["Image"] == image for c in running)

def sh(*args, timeout=60):
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... exited {out.returncode}:\n"
                         f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout

# --- Slipway's side ---
stack_file = os.path.join(work, "stack.yml")

def write_stack(image):
    with open(stack_file, "w") as f:
        f.write(f"""services:
  web:
    image: {image}
    command: {json.dumps(["sh", "-c", CMD.replace("$", "$$")])}
    expose: ["8080"]
    stop_grace_period: 2s
    healthcheck:
      test: {json.dumps(["CMD-SHELL", HEALTH])}
      interval: 1s
      timeout: 2s
      retries: 1
      start_period: 0s
    deploy:
      replicas: {REPLICAS}
      update_config:
        parallelism: {par}
        order: start-first
        delay: 0s
        failure_action: rollback
""")

def through_edge():
    req = urllib.request.Request(f"http://{edge}/", headers={"Host": "web.apps.test"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode().strip()
    except Exception as e:
        return 0, str(e)

def slipway_deploy(image):
    write_stack(image)
    t0 = time.time_ns()
    out = subprocess.run([binary, "stack", "deploy", f"{env}/shop", "-f", stack_file, "--wait",
                          "--server", url, "--token", admin],
                         capture_output=True, text=True, timeout=TIMEOUT)
    wall = (time.time_ns() - t0) / 1e9
    text = out.stdout + out.stderr
    if out.returncode != 0 or "succeeded" not in text:
        raise SystemExit(f"slipway stack deploy exited {out.returncode}:\n{text[-3000:]}")
    answer = through_edge()
    if answer != (200, version[image]):
        raise SystemExit(f"the edge proxy answers {answer}, not {version[image]}")
    found = re.search(r"revision (\d+) recorded", text)
    if not found:
        raise SystemExit(f"no revision number in:\n{text[-3000:]}")
    revision = found.group(1)
    return t0, wall, revision

def engine_start_seconds(revision):
    """What the engine spent in the revision's container starts, from its rollout steps
    (`container_started.engine_ms`); the starts of one batch run one after another."""
    req = urllib.request.Request(f"{url}/api/stacks/{env}/shop/revisions/{revision}",
                                 headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        steps = json.load(r)["steps"]
    return sum(s["detail"].get("engine_ms", 0) for s in steps
               if s["kind"] == "container_started") / 1000

def slipway_round(image):
    t0, wall, revision = slipway_deploy(image)
    busy = batches_start_to_healthy(
        lambda a: a.get("io.slipway.env") == env and a.get("io.slipway.revision") == revision,
        t0, f"slipway revision {revision}")
    return wall, (busy[0], engine_start_seconds(revision))

# --- Swarm's side ---
SWARM_FLAGS = ["--update-parallelism", str(par), "--update-order", "start-first",
               "--update-delay", "0s", "--update-failure-action", "rollback",
               "--update-monitor", monitor, "--no-resolve-image"]

def swarm_wait(image, t0, proc):
    """Polls until converged (and the CLI, if any, exited): (converged s, CLI wall s)."""
    converged = cli = None
    deadline = time.time() + TIMEOUT
    while converged is None or (proc is not None and cli is None):
        now = time.time_ns()
        if converged is None and swarm_converged(image):
            converged = (now - t0) / 1e9
        if proc is not None and cli is None and proc.poll() is not None:
            cli = (now - t0) / 1e9
            if proc.returncode != 0:
                raise SystemExit(f"docker service update exited {proc.returncode}:\n"
                                 f"{open(os.path.join(work, 'update.log')).read()[-3000:]}")
        if time.time() > deadline:
            if proc is not None and proc.poll() is None:
                proc.kill()
            raise SystemExit(f"swarm: not converged on {image} within {TIMEOUT} s")
        time.sleep(0.05)
    return converged, cli

def swarm_round(image):
    t0 = time.time_ns()
    with open(os.path.join(work, "update.log"), "w") as log:
        proc = subprocess.Popen(["docker", "service", "update", "--image", image, *SWARM_FLAGS,
                                 service], stdout=log, stderr=subprocess.STDOUT)
    converged, cli = swarm_wait(image, t0, proc)
    state = sh("docker", "service", "inspect", "--format", "{{.UpdateStatus.State}}",
               service).strip()
    if state != "completed":
        raise SystemExit(f"swarm: UpdateStatus.State is {state!r}, not completed")
    tasks = sh("docker", "service", "ps", service, "--filter", "desired-state=running",
               "--format", "{{.Image}} {{.CurrentState}}").split("\n")
    tasks = [t for t in tasks if t]
    if len(tasks) != REPLICAS or not all(t.startswith(image + " Running") for t in tasks):
        raise SystemExit(f"swarm: tasks after the update: {tasks}")
    busy = batches_start_to_healthy(
        lambda a: a.get("com.docker.swarm.service.name") == service and a.get("image") == image,
        t0, "swarm update")
    return converged, cli, busy

try:
    # The first revision on both sides (not measured).
    slipway_deploy(img1)
    t0 = time.time_ns()
    sh("docker", "service", "create", "--detach", "--name", service,
       "--replicas", str(REPLICAS), "--container-label", f"io.slipway.bench={run}",
       "--health-cmd", HEALTH, "--health-interval", "1s", "--health-timeout", "2s",
       "--health-retries", "1", "--health-start-period", "0s", "--stop-grace-period", "2s",
       *SWARM_FLAGS, img1, "sh", "-c", CMD)
    swarm_wait(img1, t0, None)

    rows = []
    for i in range(1, rounds + 1):
        image = img2 if i % 2 else img1
        if i % 2:
            s_wall, s_busy = slipway_round(image)
            w_conv, w_cli, w_busy = swarm_round(image)
        else:
            w_conv, w_cli, w_busy = swarm_round(image)
            s_wall, s_busy = slipway_round(image)
        rows.append((s_wall, s_busy[0], w_conv, w_cli, w_busy[0], s_busy[1], w_busy[1]))
        print(f"  {i:2}: -> {version[image]}   slipway deploy --wait {s_wall:5.2f} s"
              f" (overhead {s_wall - s_busy[0]:4.2f} s beyond start->healthy,"
              f" {s_wall - s_busy[0] - s_busy[1]:4.2f} s beyond the engine's starts too)"
              f"   swarm converged {w_conv:5.2f} s (overhead {w_conv - w_busy[0]:4.2f} s,"
              f" {w_conv - w_busy[1]:4.2f} s; CLI {w_cli:5.2f} s)", file=sys.stderr)
finally:
    events.terminate()
    events.wait()

med = [statistics.median(r[k] for r in rows) for k in range(7)]
s_over = statistics.median(r[0] - r[1] for r in rows)
w_over = statistics.median(r[2] - r[4] for r in rows)
w_over_c = statistics.median(r[2] - r[6] for r in rows)
print(f"rolling update to a new image, {REPLICAS} replicas, parallelism {par}, start-first,"
      f" health check every 1 s (median of {rounds} rounds):")
print(f"  slipway stack deploy --wait:               {med[0]:5.2f} s")
print(f"  docker service update, until converged:    {med[2]:5.2f} s"
      f" (the CLI returns after {med[3]:.2f} s: it waits --update-monitor {monitor})")
print(f"  ratio slipway / swarm:                     {med[0] / med[2]:5.2f} (target <= 1.0)")
print(f"  slipway's overhead beyond start->healthy:  {s_over:5.2f} s (target < 1 s;"
      f" {REPLICAS // par + (REPLICAS % par > 0)} batches' start->healthy {med[1]:.2f} s)")
print(f"  swarm's overhead beyond start->healthy:    {w_over:5.2f} s"
      f" (batches' start->healthy {med[4]:.2f} s)")
s_over_e = statistics.median(r[0] - r[1] - r[5] for r in rows)
print(f"  slipway's own time (beyond start->healthy and the engine's start calls, "
      f"{med[5]:.2f} s): {s_over_e:5.2f} s")
print(f"  swarm's overhead beyond create->healthy:   {w_over_c:5.2f} s"
      f" (Slipway creates each batch's containers while the one before is gated)")
PY
