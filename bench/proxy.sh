#!/usr/bin/env bash
# Benchmark: Slipway's edge proxy (`slipway proxy`) against Debian's nginx as a reverse
# proxy, side by side on loopback in one run, in front of the same backend (a second nginx
# answering a 13-byte body from memory, one worker):
#   1. plain HTTP/1.1 with keep-alive: `wrk -t2 -c64` for DURATION seconds, requests per
#      second and p99 latency;
#   2. TLS with HTTP/2: `h2load -c64 -m10` over https (ALPN h2), the same;
#   3. the added median latency: one connection, one request at a time (`wrk -t1 -c1
#      --latency`), through each proxy minus straight to the backend.
# nginx gets `worker_processes` = Slipway's worker threads (the cores), keep-alive to the
# backend (`keepalive 64`, HTTP/1.1) and the same certificate. Rounds alternate the two
# proxies; each figure is the median of ROUNDS rounds. Target: RPS ratio Slipway/nginx
# >= 1.0 and p99 no higher than nginx's, plain and TLS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prepare.sh
. scripts/lib/bench.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slipway-target}"
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bin=${SLIPWAY_BIN:-$(build_release)}

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
THREADS=$(nproc)
work=$(mktemp -d)
pids=()
cleanup() {
  stop_pids
  for conf in "$work"/nginx-*.conf; do
    [ -f "$conf" ] && nginx -p "$work" -c "$conf" -s stop 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the certificate both proxies serve (a throwaway CA, so the clients need no -k) ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=app.test" \
  -keyout "$work/app.key" -out "$work/app.csr" 2>/dev/null
printf 'subjectAltName=DNS:app.test\n' >"$work/san.ext"
openssl x509 -req -in "$work/app.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/app.pem" 2>/dev/null
cat "$work/app.pem" "$work/ca.pem" >"$work/fullchain.pem"

mkdir -p "$work/logs"
nginx_start() { # name conf-body
  cat >"$work/nginx-$1.conf" <<EOF
$2
pid $work/nginx-$1.pid;
error_log $work/logs/$1-error.log error;
EOF
  nginx -p "$work" -c "$work/nginx-$1.conf"
}
events_and_temp="
events { worker_connections 4096; }
"
temp_paths="
    client_body_temp_path $work/tmp-body; proxy_temp_path $work/tmp-proxy;
    fastcgi_temp_path $work/tmp-fcgi; uwsgi_temp_path $work/tmp-uwsgi; scgi_temp_path $work/tmp-scgi;
    access_log off;
"

# --- the backend ---
bport=$(free_port)
nginx_start backend "
worker_processes 1;
$events_and_temp
http {
  $temp_paths
  server {
    listen 127.0.0.1:$bport reuseport backlog=4096;
    keepalive_requests 1000000;
    location / { return 200 'hello, proxy\n'; }
  }
}"

# --- nginx as the reverse proxy ---
nport=$(free_port)
ntls=$(free_port)
nginx_start proxy "
worker_processes $THREADS;
$events_and_temp
http {
  $temp_paths
  upstream backend { server 127.0.0.1:$bport; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$nport backlog=4096;
    listen 127.0.0.1:$ntls ssl http2 backlog=4096;
    server_name app.test;
    ssl_certificate $work/fullchain.pem;
    ssl_certificate_key $work/app.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}"

# --- Slipway ---
sport=$(free_port)
stls=$(free_port)
cat >"$work/routes.yml" <<EOF
routes:
  - host: app.test
    backends: ["127.0.0.1:$bport"]
    tls: app.test
  # h2load sends no SNI to an IP address: the listener's IP names this route.
  - host: 127.0.0.1
    backends: ["127.0.0.1:$bport"]
    tls: app.test
EOF
"$bin" proxy cert add app.test --cert "$work/fullchain.pem" --key "$work/app.key" \
  --data-dir "$work/slipway" >/dev/null
RUST_LOG=warn "$bin" proxy --http "127.0.0.1:$sport" --https "127.0.0.1:$stls" \
  --data-dir "$work/slipway" --no-acme --routes "$work/routes.yml" >"$work/slipway.out" &
pids+=($!)

for url in "http://127.0.0.1:$bport/" "http://127.0.0.1:$nport/" "http://127.0.0.1:$sport/"; do
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null -H 'host: app.test' "$url" && break
    sleep 0.1
  done
  curl -fs -o /dev/null -H 'host: app.test' "$url" || { echo "$url did not answer" >&2; exit 1; }
done
for port in "$ntls" "$stls"; do
  curl -fs -o /dev/null --http2 --cacert "$work/ca.pem" --resolve "app.test:$port:127.0.0.1" \
    "https://app.test:$port/" || { echo "TLS on $port did not answer" >&2; exit 1; }
done

# wrk's summary as "rps p99_ms errors", with non-2xx answers and socket errors counted.
wrk_run() { # connections threads seconds url
  wrk -t"$2" -c"$1" -d"$3"s --latency -H 'Host: app.test' "$4" >"$work/wrk.out" 2>&1
  python3 - "$work/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
lat = {m.group(1): ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)}
errors = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
if m: errors += sum(int(x) for x in m.groups())
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if m: errors += int(m.group(1))
print(f"{rps:.0f} {lat['99']:.3f} {errors} {lat['50']:.3f}")
PY
}

# h2load's summary as "rps p99_ms errors" (p99 from its per-request log).
h2_run() { # port
  h2load -c64 -m10 -t"$THREADS" -D"$DURATION" --warm-up-time=1 \
    --log-file="$work/h2.log" -H ':authority: app.test' \
    "https://127.0.0.1:$1/" >"$work/h2.out" 2>&1 || true
  python3 - "$work/h2.out" "$work/h2.log" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", t).group(1))
m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", t)
errors = int(m.group(2)) + int(m.group(3))
m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t)
errors += int(m.group(3)) + int(m.group(4))
if "h2" not in re.search(r"Application protocol: (\S+)", t).group(1):
    sys.exit("h2load did not negotiate h2")
lat = sorted(int(l.split()[2]) for l in open(sys.argv[2]) if l.strip())
p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000.0
print(f"{rps:.0f} {p99:.3f} {errors}")
PY
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

declare -A R
say "plain HTTP/1.1, wrk -t2 -c64 ${DURATION}s; TLS + HTTP/2, h2load -c64 -m10 ${DURATION}s; $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
  for who in nginx slipway; do
    if [ $who = nginx ]; then p=$nport; t=$ntls; else p=$sport; t=$stls; fi
    read -r rps p99 err _ < <(wrk_run 64 2 "$DURATION" "http://127.0.0.1:$p/")
    R[$who,plain,rps]+="$rps "; R[$who,plain,p99]+="$p99 "; R[$who,plain,err]+="$err "
    read -r rps p99 err < <(h2_run "$t")
    R[$who,tls,rps]+="$rps "; R[$who,tls,p99]+="$p99 "; R[$who,tls,err]+="$err "
    echo "  round $round $who: plain ${R[$who,plain,rps]##* }… see below"
  done
done
# The added latency: one request at a time, the three interleaved for ROUNDS rounds (one
# lone run is at the mercy of how soon an idle virtual CPU wakes).
lat_direct=(); lat_nginx=(); lat_slip=()
for round in $(seq 1 "$ROUNDS"); do
  read -r _ _ _ v < <(wrk_run 1 1 4 "http://127.0.0.1:$bport/"); lat_direct+=("$v")
  read -r _ _ _ v < <(wrk_run 1 1 4 "http://127.0.0.1:$nport/"); lat_nginx+=("$v")
  read -r _ _ _ v < <(wrk_run 1 1 4 "http://127.0.0.1:$sport/"); lat_slip+=("$v")
done
direct50=$(median "${lat_direct[@]}"); nginx50=$(median "${lat_nginx[@]}"); slip50=$(median "${lat_slip[@]}")
echo "one request at a time, medians in ms: direct ${lat_direct[*]} | nginx ${lat_nginx[*]} | slipway ${lat_slip[*]}"

echo
for mode in plain tls; do
  for who in nginx slipway; do
    echo "$mode $who: rps ${R[$who,$mode,rps]}| p99 ms ${R[$who,$mode,p99]}| errors ${R[$who,$mode,err]}"
  done
  n_rps=$(median ${R[nginx,$mode,rps]}); s_rps=$(median ${R[slipway,$mode,rps]})
  n_p99=$(median ${R[nginx,$mode,p99]}); s_p99=$(median ${R[slipway,$mode,p99]})
  python3 -c "import sys; n,s,np,sp=map(float,sys.argv[1:]); print(f'$mode: slipway {s:.0f} req/s vs nginx {n:.0f}: ratio {s/n:.2f} (target >= 1.0); p99 {sp:.2f} ms vs {np:.2f} ms (target <= nginx)')" \
    "$n_rps" "$s_rps" "$n_p99" "$s_p99"
done
python3 -c "import sys; d,n,s=map(float,sys.argv[1:]); print(f'added median latency, one request at a time: slipway {s-d:.3f} ms, nginx {n-d:.3f} ms (direct {d:.3f} ms)')" \
  "$direct50" "$nginx50" "$slip50"
