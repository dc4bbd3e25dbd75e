# Sourced by scripts/test, scripts/demo and bench/*: makes a fresh Debian/Ubuntu machine
# ready (packages, a running Docker engine, the busybox base image). Idempotent.

# Image every test and example runs: FROM scratch with Debian's busybox-static, because no
# public registry is reachable from the machines Slipway is tested on.
SLIPWAY_BASE_IMAGE="${SLIPWAY_BASE_IMAGE:-slipway-test/busybox:latest}"
export SLIPWAY_TEST_IMAGE="${SLIPWAY_TEST_IMAGE:-$SLIPWAY_BASE_IMAGE}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
[ -n "${NO_COLOR:-}" ] && say() { printf '==> %s\n' "$*" >&2; }

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

prepare_machine() {
  ensure_packages
  ensure_dockerd
  ensure_base_image
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slipway-target}"
}

# Builds the release binary (for the demo and benchmarks) and prints its path.
build_release() {
  say "building slipway (release)"
  cargo build --release --locked -q -p slipway
  printf '%s\n' "$CARGO_TARGET_DIR/release/slipway"
}

ensure_hyperfine() {
  command -v hyperfine >/dev/null 2>&1 && return
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq hyperfine >/dev/null
}
