# Shared by the benchmarks under bench/ (sourced after prepare.sh).

# N random bytes as lowercase hex (tokens and run ids).
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Stops the processes in the array `pids` and waits for them (from a cleanup trap).
stop_pids() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# Starts `slipway up` ($bin, admin token $ADMIN, data in $work/data, one build at a time)
# with the extra arguments given, and waits for its facts line: sets `url`, `up_facts`
# and `up_pid` (in `pids`, with the reader that keeps draining its stdout). Its log is
# $work/up.log, printed when it does not come up.
start_up() {
  mkfifo "$work/up.out"
  RUST_LOG=warn "$bin" up --listen 127.0.0.1:0 --json --admin-token "$ADMIN" \
    --data-dir "$work/data" --capacity 1 "$@" >"$work/up.out" 2>"$work/up.log" &
  up_pid=$!
  pids+=("$up_pid")
  exec 3<"$work/up.out"
  read -r -t 30 up_facts <&3 || { cat "$work/up.log" >&2; return 1; }
  # Keep draining its stdout so it never blocks on a full pipe.
  cat <&3 >/dev/null &
  pids+=("$!")
  url=$(up_fact url)
}

# One field of `slipway up`'s facts line (after start_up).
up_fact() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$up_facts" "$1"; }
