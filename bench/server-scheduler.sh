#!/usr/bin/env bash
# Benchmark: scheduler overhead per stage. 1,000 stages of a no-op `type: exec` pipeline
# (clone disabled, one step `true` run as a host process, no containers) through
# `slipway server` and 4 `slipway runner` processes of capacity 1, all on 127.0.0.1:
# BUILDS builds (default 10) of a file of PIPELINES independent pipelines (default 100,
# `---` documents), triggered one after the other through the REST API (manual builds of
# `main`: each fetches the mirror, reads and compiles the file, stores 100 stages).
#
# Side by side, in the same run, the same 1,000 stages with no scheduler at all: 4
# `slipway exec` processes at once, each running 250 of them one after the other (a file
# of 250 such pipelines, each `depends_on` the one before). ROUNDS rounds (default 3)
# through the server, each between two such runs: the shared machine's load moves by more
# than the figure's margin between minutes, so one round says little, and the median of
# rounds each compared with its neighbours is the figure. Both kinds of run have 4 stages
# in flight on the same cores, so what one stage costs a slot includes, in both, the other
# slots' steps competing for the CPU.
#
#   wall        = a round's last build's `finished` - the moment its first trigger was sent
#   slot        = wall x 4 runners / 1,000 stages     (what one stage costs a runner slot)
#   direct slot = (last `pipeline_finished` - first event of the 4 `slipway exec`, each
#                 with a work root of its own) x 4 / 1,000, the mean of the runs just
#                 before and after the round
#   overhead    = slot - direct slot, median of the rounds    (target: under 5 ms a stage)
# Also printed: the earlier formula, slot - the engine's time for one such stage alone
# (`slipway exec --json` of a one-pipeline file, REPS times, mean of first event to
# `pipeline_finished` on the engine's millisecond clock), which charges the scheduler with
# the steps' competition for the CPU too; the whole `slipway exec` process; the median
# lease-to-done time of a stage as the server recorded it; and the CPU a stage cost.
#
# SLIPWAY_BIN=path skips the release build (a binary built elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
prepare_machine
bin="${SLIPWAY_BIN:-$(build_release)}"
BUILDS="${BUILDS:-10}"
PIPELINES="${PIPELINES:-100}"
RUNNERS=4
REPS="${REPS:-30}"
ROUNDS="${ROUNDS:-3}"
case "$ROUNDS" in
  *[!0-9]* | '' | *[02468]) echo "error: ROUNDS must be an odd number (the figure is the median round), not '$ROUNDS'" >&2; exit 2 ;;
esac
ADMIN="bench-$(random_hex 16)"

work=$(mktemp -d)
pids=()
cleanup() {
  stop_pids
  rm -rf "$work"
}
trap cleanup EXIT

pipeline() { # name
  printf 'kind: pipeline\ntype: exec\nname: %s\nclone:\n  disable: true\nsteps:\n- name: noop\n  commands: ["true"]\n' "$1"
}

# --- the repository ---
src="$work/src"
git init -q -b main "$src"
for i in $(seq 1 "$PIPELINES"); do
  [ "$i" -gt 1 ] && echo "---"
  pipeline "p$i"
done >"$src/.drone.yml"
git -C "$src" add -A
git -C "$src" -c user.name=b -c user.email=b@example.invalid commit -q -m bench
git clone -q --bare "$src" "$work/app.git"

# --- the engine alone: a one-pipeline file, outside any git repository ---
mkdir -p "$work/one"
pipeline one >"$work/one/.slipway.yml"

# --- no scheduler: a chain of STAGES / RUNNERS pipelines per `slipway exec` ---
mkdir -p "$work/chain"
for i in $(seq 1 $((BUILDS * PIPELINES / RUNNERS))); do
  [ "$i" -gt 1 ] && echo "---"
  pipeline "c$i"
  [ "$i" -gt 1 ] && printf 'depends_on: [c%s]\n' $((i - 1))
done >"$work/chain/.slipway.yml"

# --- slipway server + 4 runners ---
mkfifo "$work/server.out"
RUST_LOG=warn "$bin" server --listen 127.0.0.1:0 --json --admin-token "$ADMIN" \
  --data-dir "$work/data" >"$work/server.out" 2>"$work/server.log" &
pids+=("$!")
exec 3<"$work/server.out"
read -r -t 30 facts <&3 || { cat "$work/server.log" >&2; exit 1; }
cat <&3 >/dev/null &
pids+=("$!")
url=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$facts")
runner_token=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["runner_token"])' "$facts")
for r in $(seq 1 "$RUNNERS"); do
  mkdir -p "$work/runner-$r"
  # The stages are `type: exec`: only runners that allow exec get them.
  RUST_LOG=warn "$bin" runner --server "$url" --token "$runner_token" --capacity 1 --allow-exec \
    --name "bench-runner-$r" --work-dir "$work/runner-$r" >"$work/runner-$r.log" 2>&1 &
  pids+=("$!")
done
# Trusted: exec pipelines run only for a trusted repository's builds.
"$bin" repo add bench/sched --clone-url "file://$work/app.git" --trusted \
  --server "$url" --token "$ADMIN" --json >/dev/null
say "slipway server at $url, $RUNNERS runners; $BUILDS builds x $PIPELINES stages"

python3 - "$url" "$ADMIN" "$BUILDS" "$PIPELINES" "$RUNNERS" "$REPS" "$ROUNDS" "$bin" "$work/one" \
  "$work/chain" "${pids[0]}" "${pids[@]:2}" <<'PY'
import json, os, statistics, subprocess, sys, time, urllib.request

url, admin, builds, pipelines, runners, reps, rounds, bin, one, chain, server_pid, *runner_pids = sys.argv[1:]
builds, pipelines, runners, reps, rounds = int(builds), int(pipelines), int(runners), int(reps), int(rounds)

def cpu_ms(pid):
    """User + system CPU of a process and of its waited-for children (a runner's steps)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")
stages = builds * pipelines

def api(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {admin}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)

deadline = time.time() + 30
while len(api("GET", "/api/runners")) < runners:
    if time.time() > deadline:
        raise SystemExit("the runners did not register")
    time.sleep(0.1)
time.sleep(0.5)  # every runner is in its long poll

def event_times(out):
    return [e["time"] for e in map(json.loads, out.splitlines()) if "time" in e]

chain_stages = runners * (stages // runners)

def direct():
    """The same stages with no scheduler: `runners` engines at once, one chain each, each
    with a work root of its own (TMPDIR) as each runner has."""
    procs = []
    for i in range(runners):
        root = os.path.join(chain, f"root-{i}")
        os.makedirs(root, exist_ok=True)
        procs.append(subprocess.Popen([bin, "exec", "--json"], cwd=chain,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, env={**os.environ, "TMPDIR": root}))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise SystemExit("a `slipway exec` of the chain failed")
    events = [list(map(json.loads, o.splitlines())) for o in outs]
    first = min(e["time"] for evs in events for e in evs if "time" in e)
    ends = [e["time"] for evs in events for e in evs if e.get("type") == "pipeline_finished"]
    if len(ends) != chain_stages:
        raise SystemExit(f"the chains ran {len(ends)} stages, not {chain_stages}")
    return (max(ends) - first) * runners / chain_stages

def server_round():
    """One round through the server: `builds` builds triggered one after the other, until
    all of them finished."""
    cpu_before = [cpu_ms(server_pid)] + [cpu_ms(p) for p in runner_pids]
    t0 = time.time() * 1000
    numbers = [api("POST", "/api/repos/bench/sched/builds", {"branch": "main"})["number"]
               for _ in range(builds)]
    t_triggered = time.time() * 1000
    deadline = time.time() + 600
    while True:
        # The list (no stages) while waiting, so watching costs the server little.
        listed = api("GET", f"/api/repos/bench/sched/builds?limit={builds + 5}")
        if all(b["status"] not in ("pending", "running") for b in listed if b["number"] in numbers):
            break
        if time.time() > deadline:
            raise SystemExit("the builds did not finish in 10 minutes")
        time.sleep(0.2)
    cpu_after = [cpu_ms(server_pid)] + [cpu_ms(p) for p in runner_pids]
    done = [api("GET", f"/api/repos/bench/sched/builds/{n}") for n in numbers]
    bad = [b for b in done if b["status"] != "success"]
    if bad:
        raise SystemExit(f"build #{bad[0]['number']} ended {bad[0]['status']}: {bad[0].get('error')}")
    all_stages = [s for b in done for s in b["stages"]]
    assert len(all_stages) == stages, len(all_stages)
    wall = max(b["finished"] for b in done) - t0
    per_runner = {}
    for s in all_stages:
        per_runner.setdefault(s["runner_id"], []).append(s)
    # A runner's idle time between the end of one stage and the lease of its next.
    gaps = []
    for mine in per_runner.values():
        mine.sort(key=lambda s: s["started"])
        gaps += [b["started"] - a["finished"] for a, b in zip(mine, mine[1:])]
    return {
        "triggers": t_triggered - t0,
        "per_runner": sorted(len(v) for v in per_runner.values()),
        "wall": wall,
        "slot": wall * runners / stages,
        "lease_to_done": statistics.median(s["finished"] - s["started"] for s in all_stages),
        "gap": statistics.median(gaps),
        "server_cpu": (cpu_after[0] - cpu_before[0]) / stages,
        "runner_cpu": sum(a - b for a, b in zip(cpu_after[1:], cpu_before[1:])) / stages,
    }

# Rounds through the server, each between two runs without it: a round is compared with
# the mean of the runs just before and after it, and the median round is the figure.
directs = [direct()]
results = []
for _ in range(rounds):
    results.append(server_round())
    directs.append(direct())
for i, r in enumerate(results):
    r["direct"] = (directs[i] + directs[i + 1]) / 2
    r["overhead"] = r["slot"] - r["direct"]

# --- the engine alone, same machine, same run ---
engine, process = [], []
for _ in range(reps):
    a = time.time()
    out = subprocess.run([bin, "exec", "--json"], cwd=one, check=True,
                         capture_output=True, text=True).stdout
    process.append((time.time() - a) * 1000)
    times = event_times(out)
    engine.append(max(times) - min(times))
engine_ms, process_ms = statistics.mean(engine), statistics.median(process)

print(f"{stages} no-op exec stages ({builds} builds x {pipelines}) through {runners} runners of capacity 1,"
      f" {rounds} rounds, each between two runs of the same stages with no scheduler"
      f" ({runners} slipway exec at once, a chain of {stages // runners} stages each)")
print("  (one engine run a chain, where the runners make one a stage: its set-up, such as the")
print("  build's id and directory, counts as overhead here, so the figure is an upper bound)")
for i, r in enumerate(results, 1):
    print(f"  round {i}: triggers sent in {r['triggers']:.0f} ms; stages per runner {r['per_runner']};"
          f" wall {r['wall'] / 1000:.2f} s; slot {r['wall']:.0f} ms x {runners} / {stages} = {r['slot']:.2f} ms;"
          f" no scheduler {r['direct']:.2f} ms; overhead {r['overhead']:.2f} ms")
    print(f"    medians: lease to done {r['lease_to_done']:.1f} ms, a runner's done to its next lease"
          f" {r['gap']:.1f} ms; CPU a stage, triggers included: server {r['server_cpu']:.2f} ms,"
          f" runners {r['runner_cpu']:.2f} ms (with their step processes), on {os.cpu_count()} cores")
runs = ", ".join(f"{d:.2f}" for d in directs)
print(f"  no scheduler, each run: {runs} ms a stage a slot")
print(f"  engine alone per stage (slipway exec, first event to pipeline_finished, mean of {reps}): {engine_ms:.2f} ms")
print(f"    (whole slipway exec process, median: {process_ms:.1f} ms)")
median = sorted(results, key=lambda r: r["overhead"])[len(results) // 2]
print(f"  earlier formula, median round's slot - engine alone: {median['slot']:.2f} - {engine_ms:.2f}"
      f" = {median['slot'] - engine_ms:.2f} ms")
each = ", ".join(f"{r['overhead']:.2f}" for r in results)
print(f"scheduler overhead per stage, median of {rounds} rounds: {median['slot']:.2f} - {median['direct']:.2f}"
      f" = {median['overhead']:.2f} ms (rounds: {each}; target < 5 ms);"
      f" ratio {median['slot'] / median['direct']:.2f}")
PY
