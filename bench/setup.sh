#!/usr/bin/env bash
# Install what the benchmark compares against. Idempotent: run it as often as
# you like; what is already there is left alone. A peer that cannot be
# installed is skipped with a note, and bench/run.py skips it in turn.
set -u
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}

note() { echo "bench/setup: $*" >&2; }

# Python side: the benchmark's own dependencies (huey, rq, matplotlib, psutil).
if ! "$py" -m pip install -q -r "$here/requirements.txt"; then
  note "pip install of bench/requirements.txt failed; Python peers may be skipped"
fi

# queuectl itself, editable, from the checkout this script lives in.
if [ -f "$here/../pyproject.toml" ] && ! "$py" -c 'import queuectl' 2>/dev/null; then
  "$py" -m pip install -q -e "$here/.." || note "pip install -e of queuectl failed"
fi

# Debian side: task-spooler (tsp), nq, and redis-server for RQ.
want=()
command -v tsp >/dev/null 2>&1 || want+=(task-spooler)
command -v nq >/dev/null 2>&1 || want+=(nq)
command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
# strace: the bench counts the lock-wait sleeps of two workers with it.
command -v strace >/dev/null 2>&1 || want+=(strace)
if [ ${#want[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # Keep the redis package from starting a system-wide server: the bench
    # starts its own on 127.0.0.1 and stops it afterwards.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    # Refresh the package lists only when apt knows nothing of what we want.
    if ! apt-cache show "${want[@]}" >/dev/null 2>&1; then
      apt-get update -qq || note "apt-get update failed"
    fi
    for pkg in "${want[@]}"; do
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 \
        || note "could not install Debian package $pkg; its peer will be skipped"
    done
    [ "$made_policy" = 1 ] && rm -f "$policy"
  else
    note "not root or no apt-get: cannot install ${want[*]}; those peers will be skipped"
  fi
fi

for tool in tsp nq redis-server strace; do
  if command -v "$tool" >/dev/null 2>&1; then note "found $tool"; else note "missing $tool"; fi
done
exit 0
