#!/usr/bin/env bash
# Debian packages and services the test suite uses, installed and started when missing.
# Idempotent; as root it installs, otherwise it only reports what is missing.
set -euo pipefail
root=0; [ "$(id -u)" = 0 ] && root=1
missing=()
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
# Browser tests: Debian's Chromium driven by Playwright (which cannot download its own here), and a font.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
# Slurm tests: a real single-node cluster (tests/slurmcluster.py starts and stops its own daemons).
{ [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/bin/sbatch ]; } || missing+=(slurm-wlm)
[ -x /usr/sbin/munged ] || missing+=(munge)
# Several replicas: the documented nginx load balancer, started by the test on its own ports.
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
# Remote ROOT inputs: a real XRootD server (tests/runtimes/servers.py starts its own on loopback, as the xrootd account).
[ -x /usr/bin/xrootd ] || missing+=(xrootd-server)
# MLaaS4HEP's recipes and TF-Serving's REST are driven with curl, as their users do.
command -v curl >/dev/null || missing+=(curl)
# The benchmarks' quick mode (tests/benchmarks/test_quick.py) drives HTTP with wrk, as make bench does.
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ $root = 1 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    # Packages' own services (nginx on port 80) are not started: the tests start what they need.
    policy=/usr/sbin/policy-rc.d; own_policy=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; own_policy=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ $own_policy = 1 ]; then rm -f $policy; fi
  else
    echo "warning: missing Debian packages (run as root to install): ${missing[*]}" >&2
  fi
fi

# PostgreSQL on 127.0.0.1:5432, user postgres without a password (a test-only cluster).
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if [ $root = 1 ] && ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
pg_isready -h 127.0.0.1 -p 5432 || echo "warning: PostgreSQL is not answering on 127.0.0.1:5432" >&2
