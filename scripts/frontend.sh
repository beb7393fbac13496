#!/usr/bin/env bash
# The dashboard's build and tests. Used by `make run` (build) and `make test` (test).
#
#   scripts/frontend.sh deps      npm ci, when package-lock.json changed since the last install
#   scripts/frontend.sh build     deps, then type-check and build frontend/dist (skipped when up to date)
#   scripts/frontend.sh chromium  make sure /usr/bin/chromium exists (apt-get install as root)
#   scripts/frontend.sh test      deps, Vitest, build, chromium, then the browser end-to-end run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRONTEND="$ROOT/frontend"
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

log() { printf '[frontend] %s\n' "$*"; }
die() { printf '[frontend] ERROR: %s\n' "$*" >&2; exit 1; }

install_node() {
  # Debian/Ubuntu: the distribution's Node.js (18+ builds this dashboard); only as root, never silently
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] || return 1
  log "Node.js/npm not found: installing nodejs and npm with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
}

need_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    install_node || true
  fi
  command -v node >/dev/null 2>&1 || die "Node.js 18 or newer is needed (https://nodejs.org or apt-get install nodejs npm)"
  command -v npm >/dev/null 2>&1 || die "npm is needed next to Node.js (apt-get install npm)"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 18 ] || die "Node.js $major is too old: install Node.js 20 or newer"
}

deps() {
  need_node
  local stamp="$FRONTEND/node_modules/.package-lock.json"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$FRONTEND/package-lock.json" ]; then
    return 0
  fi
  log "installing the dashboard's packages (npm ci)"
  (cd "$FRONTEND" && npm ci --no-audit --no-fund --loglevel=error)
}

up_to_date() {
  local index="$FRONTEND/dist/index.html"
  [ -f "$index" ] || return 1
  [ -z "$(find "$FRONTEND/src" "$FRONTEND/public" "$FRONTEND/index.html" "$FRONTEND/package-lock.json" \
    "$FRONTEND/vite.config.ts" -newer "$index" -print -quit 2>/dev/null)" ]
}

build() {
  if up_to_date; then
    log "frontend/dist is up to date"
    return 0
  fi
  deps
  log "building the dashboard (frontend/dist)"
  (cd "$FRONTEND" && npx --no-install tsc --noEmit && npx --no-install vite build --logLevel warn)
}

chromium() {
  if [ -x "$CHROMIUM" ]; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's Chromium for the browser tests (apt-get install chromium)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM is still missing"
    return 0
  fi
  die "the browser tests need Chromium at $CHROMIUM: run 'sudo apt-get install chromium' (Debian/Ubuntu), \
or set CHROMIUM=/path/to/chromium"
}

unit() {
  deps
  log "unit tests (Vitest)"
  (cd "$FRONTEND" && npx --no-install vitest run)
}

e2e() {
  build
  chromium
  [ -x "$ROOT/.venv/bin/finsecure" ] || die "the e2e run starts .venv/bin/finsecure: run 'make services' or 'pip install -e .' first"
  log "end-to-end tests in Chromium (screenshots in frontend/e2e/screenshots)"
  (cd "$FRONTEND" && CHROMIUM="$CHROMIUM" node e2e/run.mjs)
}

case "${1:-build}" in
  deps) deps ;;
  build) build ;;
  chromium) chromium ;;
  unit) unit ;;
  e2e) e2e ;;
  test) unit; e2e ;;
  *) die "usage: $0 {deps|build|chromium|unit|e2e|test}" ;;
esac
