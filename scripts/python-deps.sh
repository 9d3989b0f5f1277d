#!/usr/bin/env bash
# Create the virtualenv and install LabHub with its test extras from the package registry.
# usage: python-deps.sh PYTHON VENV
set -euo pipefail
python=$1 venv=$2
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
  else
    echo "error: $python lacks venv/ensurepip; install python3-venv" >&2; exit 1
  fi
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
