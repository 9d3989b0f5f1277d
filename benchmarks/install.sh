#!/usr/bin/env bash
# Install the peers the benchmarks compare LabHub with, each from its registry:
#   JupyterHub + JupyterLab (PyPI)      -> benchmarks/.env   (a virtualenv of its own)
#   configurable-http-proxy (npm)       -> benchmarks/node
#   wrk (Debian), when root and missing
# Idempotent: a stamp file skips work already done.  usage: install.sh [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-$(command -v python3.11 || command -v python3)}
JUPYTERHUB_VERSION=${JUPYTERHUB_VERSION:-6.1.1}
JUPYTERLAB_VERSION=${JUPYTERLAB_VERSION:-4.6.6}
CHP_VERSION=${CHP_VERSION:-5.3.0}

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench: installing wrk (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
  else
    echo "bench: warning: wrk is missing (apt-get install wrk); HTTP figures fall back to a Python client" >&2
  fi
fi

env=$here/.env
stamp=$env/.installed-jh$JUPYTERHUB_VERSION-jl$JUPYTERLAB_VERSION
if [ ! -e "$stamp" ]; then
  echo "bench: installing JupyterHub $JUPYTERHUB_VERSION + JupyterLab $JUPYTERLAB_VERSION into benchmarks/.env"
  [ -x "$env/bin/python" ] || "$python" -m venv "$env"
  pip() { "$env/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
  pip install -q --disable-pip-version-check --upgrade pip
  # fall back to the newest releases when the pinned ones are not on the index (the results record versions)
  pip install -q --disable-pip-version-check "jupyterhub==$JUPYTERHUB_VERSION" "jupyterlab==$JUPYTERLAB_VERSION" \
    || pip install -q --disable-pip-version-check jupyterhub jupyterlab
  rm -f "$env"/.installed-*
  touch "$stamp"
fi

node_prefix=$here/node
if [ ! -x "$node_prefix/node_modules/.bin/configurable-http-proxy" ]; then
  if command -v npm >/dev/null; then
    echo "bench: installing configurable-http-proxy@$CHP_VERSION (npm) into benchmarks/node"
    npm install --silent --no-save --prefix "$node_prefix" "configurable-http-proxy@$CHP_VERSION" \
      || npm install --silent --no-save --prefix "$node_prefix" "configurable-http-proxy@5"
  else
    echo "bench: warning: npm is missing; JupyterHub cannot run without configurable-http-proxy" >&2
  fi
fi
echo "bench: peers installed"
