#!/usr/bin/env bash
# Benchmark: a step printing 200,000 lines through `slipway up`, every line stored and
# streamed live, against the same command in `docker run --rm IMAGE sh -c CMD > /dev/null`,
# side by side in one run (REPS of each, default 5, interleaved; medians).
#
# - The step (busybox image): awk printing LINES lines of ~60 bytes ("line N of LINES: ...").
# - Each build is started through the REST API; at once a client follows the step's live log
#   (`slipway build logs REPO N --step print -f > file`, the SSE stream). Afterwards the raw
#   log is downloaded (`slipway build logs REPO N --step print`); both must hold lines
#   1..LINES exactly once, in order.
# - Slipway's time: the step's started -> finished as the build records it (`build show`).
#   Also printed: step started -> the follower's last line written (its file's mtime), i.e.
#   until every line had been shipped, stored and streamed.
# - docker run: wall time of `docker run --rm IMAGE sh -c CMD > /dev/null`.
# - The server's RSS: VmRSS of the `slipway up` process sampled every 100 ms from start to
#   end, and its VmHWM at the end.
# Targets: step time <= 1.3 x docker run; RSS under 150 MB throughout.
#
# SLIPWAY_BIN=path skips the release build (a binary built elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
bin="${SLIPWAY_BIN:-$(build_release)}"
LINES="${LINES:-200000}"
REPS="${REPS:-5}"
ADMIN="bench-$(random_hex 16)"
CMD="awk 'BEGIN { for (i = 1; i <= $LINES; i++) printf \"line %d of $LINES: the quick brown fox jumps over the lazy dog\\n\", i }'"

work=$(mktemp -d)
pids=()
cleanup() {
  stop_pids
  rm -rf "$work"
}
trap cleanup EXIT

src="$work/src"
git init -q -b main "$src"
{
  printf 'kind: pipeline\nname: logs\nclone:\n  disable: true\nsteps:\n- name: print\n  image: %s\n  commands:\n  - |\n' "$SLIPWAY_BASE_IMAGE"
  printf '    %s\n' "$CMD"
} >"$src/.drone.yml"
git -C "$src" add -A
git -C "$src" -c user.name=b -c user.email=b@example.invalid commit -q -m bench
git clone -q --bare "$src" "$work/app.git"

start_up --no-proxy || exit 1
"$bin" repo add bench/logs --clone-url "file://$work/app.git" \
  --server "$url" --token "$ADMIN" --json >/dev/null

# RSS of the server, every 100 ms, until it is gone.
(
  while [ -r "/proc/$up_pid/status" ]; do
    awk '/^VmRSS/ {print $2}' "/proc/$up_pid/status" 2>/dev/null || true
    sleep 0.1
  done
) >"$work/rss" &
pids+=("$!")
say "slipway up at $url; $REPS builds of $LINES lines, $REPS docker runs"

python3 - "$url" "$ADMIN" "$bin" "$LINES" "$REPS" "$work" "$SLIPWAY_BASE_IMAGE" "$CMD" "$up_pid" <<'PY'
import json, os, re, statistics, subprocess, sys, time, urllib.request

url, admin, bin, lines, reps, work, image, cmd, up_pid = sys.argv[1:]
lines, reps = int(lines), int(reps)
flags = ["--server", url, "--token", admin]

def api(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {admin}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)

line_re = re.compile(rf"^line (\d+) of {lines}: ")
def check(path, what):
    got = [int(m.group(1)) for m in map(line_re.match, open(path, errors="replace")) if m]
    if got != list(range(1, lines + 1)):
        missing = lines - len(set(got))
        raise SystemExit(f"{what}: {len(got)} lines, {missing} missing, in order: "
                         f"{got == sorted(got)}")
    return len(got)

def docker_run():
    a = time.time()
    subprocess.run(["docker", "run", "--rm", image, "sh", "-c", cmd], check=True,
                   stdout=subprocess.DEVNULL)
    return time.time() - a

def slipway_build(rep):
    number = api("POST", "/api/repos/bench/logs/builds", {"branch": "main"})["number"]
    streamed = os.path.join(work, f"streamed-{rep}.log")
    with open(streamed, "w") as out:
        follower = subprocess.Popen([bin, "build", "logs", "bench/logs", str(number),
                                     "--step", "print", "-f", *flags], stdout=out)
        deadline = time.time() + 300
        while True:
            b = api("GET", f"/api/repos/bench/logs/builds/{number}")
            if b["status"] not in ("pending", "running"):
                break
            if time.time() > deadline:
                raise SystemExit(f"build #{number} still {b['status']}")
            time.sleep(0.1)
        follower.wait(timeout=120)
    if b["status"] != "success":
        raise SystemExit(f"build #{number} ended {b['status']}: {b.get('error')}")
    step = next(s for s in b["stages"][0]["steps"] if s["name"] == "print")
    stored = os.path.join(work, f"stored-{rep}.log")
    with open(stored, "w") as out:
        subprocess.run([bin, "build", "logs", "bench/logs", str(number), "--step", "print",
                        *flags], stdout=out, check=True)
    n_stored, n_streamed = check(stored, "stored log"), check(streamed, "streamed log")
    wc = sum(1 for _ in open(stored, "rb"))
    step_s = (step["finished"] - step["started"]) / 1000
    last_line_s = os.stat(streamed).st_mtime_ns / 1e9 - step["started"] / 1000
    return step_s, last_line_s, n_stored, n_streamed, wc

docker_t, step_t, last_t = [], [], []
for rep in range(reps):
    docker_t.append(docker_run())
    s, l, n_stored, n_streamed, wc = slipway_build(rep)
    step_t.append(s)
    last_t.append(l)
    print(f"  {rep + 1}: docker run {docker_t[-1]:.2f} s; slipway step {s:.2f} s, step start -> last"
          f" line at the follower {l:.2f} s; stored {n_stored} (wc -l {wc}), streamed {n_streamed}",
          file=sys.stderr)

rss = [int(x) for x in open(os.path.join(work, "rss")).read().split() if x.isdigit()]
hwm = next(int(l.split()[1]) for l in open(f"/proc/{up_pid}/status") if l.startswith("VmHWM"))
d, s, l = statistics.median(docker_t), statistics.median(step_t), statistics.median(last_t)
print(f"{lines} lines, median of {reps}: docker run > /dev/null {d:.2f} s; slipway step {s:.2f} s"
      f" (ratio {s / d:.2f}, target <= 1.3)")
print(f"  step start -> last line at the live follower: {l:.2f} s (ratio {l / d:.2f})")
print(f"  every line stored (raw log) and streamed (SSE follower): {lines} of {lines}, {reps} builds")
print(f"server RSS: peak of {len(rss)} samples every 100 ms {max(rss) / 1024:.1f} MiB,"
      f" VmHWM {hwm / 1024:.1f} MiB (target < 150 MB)")
PY
