#!/usr/bin/env bash
# Benchmark: notifications through a real `slipway up` (SQLite, the embedded runner).
#
# 1. Build end -> message accepted: a webhook channel to a loopback stand-in (Python's
#    http.server in this script, answering 200), N builds (default 20) of a one-step
#    pipeline run in Docker one at a time. Latency = the stand-in's receive time minus the
#    build's `finished` as the store recorded it (same host, same clock, milliseconds).
#    Includes the outbox row, the fan-out (rules, template), the delivery row, the worker's
#    wake-up and the HTTP POST. Target: median under 50 ms.
# 2. EVENTS events (default 1000) to 10 webhook channels, one of which always answers 503
#    (so every one of its deliveries is retried with backoff), against a round where all
#    10 answer 200. Events are builds of a repository whose pipeline file does not parse:
#    each is over (`error`) as it is created, so no container runs and the rate is the
#    notifications'. Per round: how many of the 9 healthy channels' 9*EVENTS deliveries
#    arrived (each must arrive exactly once), the time until the last one did, and their
#    latency (receive time minus the build's end) p50 and p99. "Unaffected": the failing
#    round's figures for the healthy channels match the healthy round's.
#
# SLIPWAY_BIN=path skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
bin="${SLIPWAY_BIN:-$(build_release)}"
N="${N:-20}"
EVENTS="${EVENTS:-1000}"
ADMIN="bench-$(random_hex 16)"

work=$(mktemp -d)
pids=()
cleanup() {
  stop_pids
  rm -rf "$work"
}
trap cleanup EXIT

repo() { # dir pipeline-text
  git init -q -b main "$1"
  printf '%s' "$2" >"$1/.drone.yml"
  git -C "$1" add -A
  git -C "$1" -c user.name=b -c user.email=b@example.invalid commit -q -m bench
  git clone -q --bare "$1" "$1.git"
}
repo "$work/ok" "$(printf 'kind: pipeline\nname: default\nclone:\n  disable: true\nsteps:\n- name: run\n  image: %s\n  commands: ["true"]\n' "$SLIPWAY_BASE_IMAGE")"
repo "$work/broken" "$(printf 'kind: pipeline\nsteps: [\n')"

start_up --no-proxy || exit 1
say "slipway up at $url"

python3 - "$url" "$ADMIN" "$work" "$N" "$EVENTS" "$bin" <<'PY'
import http.server, json, statistics, subprocess, sys, threading, time, urllib.request

url, admin, work, n, events, binary = sys.argv[1:]
n, events = int(n), int(events)

# --- the stand-in: records (receive ms, path, repo, build number) of every request ---
seen, lock = [], threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        at = time.time() * 1000
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            build = json.loads(body)["event"]["build"]["number"]
            repo = json.loads(body)["event"]["repo"]["full_name"]
        except Exception:
            build, repo = None, None
        failing = self.path.startswith("/fail")
        with lock:
            seen.append((at, self.path, repo, build, failing))
        status, answer = (503, b'{"error":"down"}') if failing else (200, b'{"ok":true}')
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
standin = "http://127.0.0.1:%d" % server.server_address[1]

def api(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + admin)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as resp:
        text = resp.read()
        return json.loads(text) if text else None

def channel(name, target, repo):
    api("POST", "/api/notify/channels", {"name": name, "kind": "webhook",
        "secrets": {"url": standin + target}, "repo": repo})

def builds(repo):
    out, before = {}, None
    while True:
        page = api("GET", "/api/repos/%s/builds?limit=200%s" % (repo, "&before=%d" % before if before else ""))
        if not page:
            return out
        for b in page:
            out[b["number"]] = b
        before = min(b["number"] for b in page)

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

# --- 1. build end -> message accepted ---
api("POST", "/api/repos", {"name": "bench/ok", "clone_url": "file://%s/ok.git" % work})
channel("latency", "/latency", "bench/ok")
for i in range(n + 1):  # the first build warms the mirror and the image up
    number = api("POST", "/api/repos/bench/ok/builds", {"branch": "main"})["number"]
    while api("GET", "/api/repos/bench/ok/builds/%d" % number)["status"] in ("pending", "running"):
        time.sleep(0.05)
deadline = time.time() + 30
while time.time() < deadline:
    with lock:
        got = [s for s in seen if s[1] == "/latency"]
    if len(got) >= n + 1:
        break
    time.sleep(0.1)
ends = builds("bench/ok")
latency = [at - ends[b]["finished"] for at, _, _, b, _ in got if b and b > 1]
print("1. build end -> message accepted by the stand-in, %d builds (Docker, one step):" % len(latency))
print("   median %.1f ms, p90 %.1f ms, max %.1f ms (target: median under 50 ms)" % (
    statistics.median(latency), pct(latency, 90), max(latency)))

# --- 2. EVENTS events to 10 channels, with and without one failing ---
def round_of(label, repo, failing):
    api("POST", "/api/repos", {"name": repo, "clone_url": "file://%s/broken.git" % work})
    for c in range(1, 10):
        channel("%s-%d" % (label, c), "/ok/%s/%d" % (label, c), repo)
    channel("%s-10" % label, ("/fail/%s" if failing else "/ok/%s/10") % label, repo)
    started = time.time() * 1000
    for i in range(events):
        api("POST", "/api/repos/%s/builds" % repo, {"branch": "main"})
    created = time.time() * 1000
    prefix = "/ok/%s/" % label
    want = 9 * events
    deadline = time.time() + 300
    while time.time() < deadline:
        with lock:
            healthy = [s for s in seen if s[1].startswith(prefix) and not s[1].endswith("/10")]
        if len(healthy) >= want:
            break
        time.sleep(0.2)
    time.sleep(1)  # any duplicate would arrive now
    with lock:
        healthy = [s for s in seen if s[1].startswith(prefix) and not s[1].endswith("/10")]
        failed = [s for s in seen if s[1] == "/fail/%s" % label]
    ends = builds(repo)
    keys = [(s[1], s[3]) for s in healthy]
    dupes = len(keys) - len(set(keys))
    lat = [at - ends[b]["finished"] for at, _, _, b, _ in healthy if b in ends]
    last = max(s[0] for s in healthy) - started
    print("2. %s: %d events in %.1f s; healthy channels: %d of %d deliveries, %d duplicates, "
          "all in %.1f s; latency p50 %.0f ms, p99 %.0f ms; failing channel: %d attempts answered 503" % (
          label, events, (created - started) / 1000, len(set(keys)), want, dupes, last / 1000,
          pct(lat, 50), pct(lat, 99), len(failed)))
    return len(set(keys)) == want and dupes == 0, last, pct(lat, 50), pct(lat, 99)

ok_a, last_a, p50_a, p99_a = round_of("allhealthy", "bench/all-healthy", False)
ok_b, last_b, p50_b, p99_b = round_of("onefailing", "bench/one-failing", True)
print("   ratio (one failing / all healthy): time to the last delivery %.2f, p50 %.2f, p99 %.2f" % (
    last_b / last_a, p50_b / max(p50_a, 1), p99_b / max(p99_a, 1)))
if not (ok_a and ok_b):
    sys.exit("some healthy deliveries were lost or duplicated")
PY
