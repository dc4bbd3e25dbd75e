# Sourced by scripts/test, scripts/demo and bench/*: makes a fresh Debian/Ubuntu machine
# ready (packages, a running Docker engine, the busybox base image). Idempotent.

# Image every test and example runs: FROM scratch with Debian's busybox-static, because no
# public registry is reachable from the machines Slipway is tested on.
SLIPWAY_BASE_IMAGE="${SLIPWAY_BASE_IMAGE:-slipway-test/busybox:latest}"
export SLIPWAY_TEST_IMAGE="${SLIPWAY_TEST_IMAGE:-$SLIPWAY_BASE_IMAGE}"

# Bold only on a terminal, and never with NO_COLOR set.
if [ -t 2 ] && [ -z "${NO_COLOR:-}" ]; then
  say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
else
  say() { printf '==> %s\n' "$*" >&2; }
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v git >/dev/null 2>&1 || missing+=(git)
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || missing+=(busybox-static)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust 1.95 or newer (https://rustup.rs) and run this again" >&2
    exit 1
  fi
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return; fi
  say "starting dockerd"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    as_root systemctl start docker || true
  fi
  if ! docker info >/dev/null 2>&1; then
    as_root sh -c 'nohup dockerd >/var/log/slipway-dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 0.5
  done
  echo "dockerd did not start; see /var/log/slipway-dockerd.log" >&2
  exit 1
}

ensure_base_image() {
  if docker image inspect "$SLIPWAY_BASE_IMAGE" >/dev/null 2>&1; then return; fi
  say "building $SLIPWAY_BASE_IMAGE from busybox-static"
  local dir
  dir=$(mktemp -d)
  cp /bin/busybox "$dir/busybox"
  cat >"$dir/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t "$SLIPWAY_BASE_IMAGE" "$dir" >/dev/null
  rm -rf "$dir"
}

# PostgreSQL for the store's tests: Debian's `postgresql` package, a cluster listening on
# 127.0.0.1:5432 only (started with pg_ctlcluster, or pg_ctl as the postgres user: no
# systemd needed), role `slipway`/`slipway` with CREATEDB. Exports SLIPWAY_TEST_POSTGRES_URL
# (tests make a fresh database per test from it). A URL already set is used as it is. When
# PostgreSQL cannot be made to work it says so and unsets the URL: those tests then skip.
SLIPWAY_PG_DEFAULT_URL="postgres://slipway:slipway@127.0.0.1:5432/postgres"

pg_as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

pg_url_works() {
  command -v psql >/dev/null 2>&1 || return 1
  psql "$1" -qAtX -c 'SELECT 1' >/dev/null 2>&1
}

ensure_postgres() {
  if [ -n "${SLIPWAY_TEST_POSTGRES_URL:-}" ]; then
    pg_url_works "$SLIPWAY_TEST_POSTGRES_URL" && return 0
    echo "warning: SLIPWAY_TEST_POSTGRES_URL is set but does not answer; PostgreSQL tests will fail" >&2
    return 0
  fi
  if pg_url_works "$SLIPWAY_PG_DEFAULT_URL"; then
    export SLIPWAY_TEST_POSTGRES_URL="$SLIPWAY_PG_DEFAULT_URL"
    return 0
  fi
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    say "installing postgresql"
    as_root apt-get update -qq
    # The package's postinst may try to start the cluster with invoke-rc.d; without an init
    # system that fails harmlessly (policy-rc.d aside), so its status is not trusted here.
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null || true
  fi
  local bin ver conf data
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || true
  if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
    echo "warning: PostgreSQL could not be installed; its tests will skip" >&2
    unset SLIPWAY_TEST_POSTGRES_URL
    return 0
  fi
  ver=$(basename "$(dirname "$bin")")
  conf=/etc/postgresql/$ver/main
  data=/var/lib/postgresql/$ver/main
  as_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  if ! pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    say "starting PostgreSQL $ver on 127.0.0.1:5432"
    if [ ! -f "$conf/postgresql.conf" ] && command -v pg_createcluster >/dev/null 2>&1; then
      as_root pg_createcluster "$ver" main -p 5432 >/dev/null || true
    fi
    if [ -f "$conf/postgresql.conf" ]; then
      # Debian's postgresql.conf reads conf.d/ last, so this wins over its defaults.
      as_root install -d -o postgres -g postgres "$conf/conf.d"
      printf "listen_addresses = '127.0.0.1'\nport = 5432\n" |
        as_root tee "$conf/conf.d/slipway-test.conf" >/dev/null
      if command -v pg_ctlcluster >/dev/null 2>&1; then
        as_root pg_ctlcluster "$ver" main start >/dev/null 2>&1 || true
      fi
      if ! pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
        pg_as_postgres "$bin/pg_ctl" -D "$data" -w -t 60 -l /tmp/slipway-postgresql.log \
          -o "-c config_file=$conf/postgresql.conf -c listen_addresses=127.0.0.1 -c port=5432" \
          start >/dev/null 2>&1 || true
      fi
    else
      # No Debian cluster tooling: a plain cluster of our own.
      data=/var/lib/postgresql/slipway-test
      if [ ! -f "$data/PG_VERSION" ]; then
        as_root install -d -o postgres -g postgres -m 0700 "$data"
        pg_as_postgres "$bin/initdb" -D "$data" --auth-local=peer --auth-host=scram-sha-256 \
          >/dev/null || true
      fi
      pg_as_postgres "$bin/pg_ctl" -D "$data" -w -t 60 -l /tmp/slipway-postgresql.log \
        -o "-c listen_addresses=127.0.0.1 -c port=5432 -c unix_socket_directories=/var/run/postgresql" \
        start >/dev/null 2>&1 || true
    fi
    local i
    for i in $(seq 1 60); do
      pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
  pg_as_postgres psql -qAtX -p 5432 -d postgres -v ON_ERROR_STOP=1 >/dev/null 2>&1 <<'SQL' || true
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'slipway') THEN
    CREATE ROLE slipway LOGIN PASSWORD 'slipway' CREATEDB;
  ELSE
    ALTER ROLE slipway LOGIN PASSWORD 'slipway' CREATEDB;
  END IF;
END
$$;
-- Lets the tests' DROP DATABASE ... WITH (FORCE) end an autovacuum worker in a test database.
GRANT pg_signal_backend TO slipway;
SQL
  if pg_url_works "$SLIPWAY_PG_DEFAULT_URL"; then
    export SLIPWAY_TEST_POSTGRES_URL="$SLIPWAY_PG_DEFAULT_URL"
  else
    echo "warning: PostgreSQL did not come up on 127.0.0.1:5432 (see /var/log/postgresql or /tmp/slipway-postgresql.log); its tests will skip" >&2
    unset SLIPWAY_TEST_POSTGRES_URL
  fi
}

# Headless Chromium and its WebDriver for the web UI's browser tests
# (crates/slipway-server/tests/it/browser.rs), from Debian.
ensure_chromium() {
  if [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/chromium ]; then return; fi
  say "installing chromium and chromium-driver"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium chromium-driver >/dev/null
}

# The clients and servers only the tests use beside Docker: curl and h2load (HTTP/2
# through the proxy), pebble and pebble-challtestsrv (ACME), aiosmtpd (the notify crate's
# email tests, Debian's python3, not a pyenv one).
ensure_test_tools() {
  local missing=()
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(python3-aiosmtpd)
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
  command -v pebble >/dev/null 2>&1 || missing+=(pebble)
  # The log routes' tests forward to a real rsyslogd over RELP and TCP.
  [ -x /usr/sbin/rsyslogd ] || missing+=(rsyslog)
  ls /usr/lib/*/rsyslog/imrelp.so >/dev/null 2>&1 || missing+=(rsyslog-relp)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# What the demo and the benchmarks need: packages, the Docker engine, the base image.
prepare_machine() {
  ensure_packages
  ensure_dockerd
  ensure_base_image
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slipway-target}"
  check_disk
}

# A build that runs out of disk fails deep inside rustc or ld ("Bus error"): say it first.
check_disk() {
  local dir="$CARGO_TARGET_DIR" free_mb
  mkdir -p "$dir"
  free_mb=$(df --output=avail -BM "$dir" 2>/dev/null | tail -1 | tr -dc 0-9)
  if [ -n "$free_mb" ] && [ "$free_mb" -lt 8000 ]; then
    echo "warning: only ${free_mb} MB free for $dir; the test build needs about 8 GB (set CARGO_TARGET_DIR elsewhere, or free space)" >&2
  fi
}

# What every test needs on top: PostgreSQL, Chromium, the proxy's clients, pebble.
prepare_tests() {
  prepare_machine
  ensure_postgres
  ensure_chromium
  ensure_test_tools
}

# Builds the release binary (for the demo and benchmarks) and prints its path.
build_release() {
  say "building slipway (release)"
  cargo build --release --locked -q -p slipway || return 1
  printf '%s\n' "$CARGO_TARGET_DIR/release/slipway"
}

ensure_hyperfine() {
  command -v hyperfine >/dev/null 2>&1 && return
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq hyperfine >/dev/null
}
