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
echo "installed: postgres $(/usr/lib/postgresql/15/bin/postgres --version | awk '{print $3}'), redis $(redis-server --version | sed -E 's/.*v=([0-9.]+).*/\1/'), kafka 4.4.0, debezium 3.6.1.Final"
