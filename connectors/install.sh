#!/usr/bin/env bash
# Install what the native stack needs, skipping what is already there:
#   Debian's postgresql (15), redis-server and haproxy, a virtualenv with Freshwire, and the pinned
#   Kafka / Connect / Debezium jars from Maven Central (cached under .cache/, kept by `make clean`).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FRESHWIRE_CACHE_DIR:-$PWD/.cache}
KAFKA_LIBS="$CACHE/kafka-4.4.0/libs"
DBZ_PLUGINS="$CACHE/debezium-3.6.1.Final/plugins"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15 postgresql-contrib)
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The cluster topology (FRESHWIRE_TOPOLOGY=cluster) puts HAProxy in front of its gateways.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
# Browser tests (tests/e2e/test_browser.py) drive Debian's Chromium through Playwright; no browser download.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.freshwire-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "installing Python packages"
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  touch "$stamp"
fi

if [ ! -f "$KAFKA_LIBS/kafka_2.13-4.4.0.jar" ]; then
  echo "fetching Kafka 4.4.0 and Connect jars from Maven Central"
  mkdir -p "$KAFKA_LIBS"
  mvn -q -B -f connectors/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
fi

if [ ! -f "$DBZ_PLUGINS/debezium-connector-postgres/debezium-connector-postgres-3.6.1.Final.jar" ]; then
  echo "fetching the Debezium Postgres connector 3.6.1.Final plugin from Maven Central"
  tmp=$(mktemp -d)
  mvn -q -B dependency:copy -Dartifact=io.debezium:debezium-connector-postgres:3.6.1.Final:tar.gz:plugin -DoutputDirectory="$tmp"
  mkdir -p "$DBZ_PLUGINS"
  tar xzf "$tmp"/debezium-connector-postgres-3.6.1.Final-plugin.tar.gz -C "$DBZ_PLUGINS"
  rm -rf "$tmp"
fi
# The Next.js package and example (clients/next, examples/nextjs): npm ci from the committed locks when
# they (or the local packages the example installs by copy) changed, then a production `next build`
# when the example's sources changed (connectors/nextjs.py keeps a digest of them).
node_ok=$(node -e 'const [a,b]=process.versions.node.split(".").map(Number); console.log(a>20||(a===20&&b>=9)?1:0)' 2>/dev/null || echo 0)
if [ "$node_ok" != 1 ]; then
  echo "Node.js >= 20.9 (with npm) is needed for clients/js, clients/next and examples/nextjs" >&2
  exit 1
fi
npm_ci() {  # npm ci in $1 unless its stamp matches the digest of its lock and the files listed after it
  local dir=$1; shift
  local digest
  digest=$(cat "$dir/package-lock.json" "$dir/package.json" "$@" | sha256sum | cut -d' ' -f1)
  if [ ! -f "$dir/node_modules/.freshwire-installed" ] || [ "$(cat "$dir/node_modules/.freshwire-installed")" != "$digest" ]; then
    echo "installing npm packages in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    mkdir -p "$dir/node_modules" && echo "$digest" > "$dir/node_modules/.freshwire-installed"
  fi
}
npm_ci clients/next
npm_ci examples/nextjs clients/next/*.js clients/next/*.d.ts clients/next/package.json \
  clients/js/freshwire.js clients/js/freshwire.d.ts clients/js/package.json
.venv/bin/python -m connectors.nextjs --build-only
echo "installed: postgres $(/usr/lib/postgresql/15/bin/postgres --version | awk '{print $3}'), redis $(redis-server --version | sed -E 's/.*v=([0-9.]+).*/\1/'), kafka 4.4.0, debezium 3.6.1.Final, next $(node -p "require('./examples/nextjs/node_modules/next/package.json').version")"
