#!/usr/bin/env bash
# Debian packages for the browser test (Chromium) and the PostgreSQL concurrency test.
# Needs root (CI and the dev machines run as root); otherwise it says so and those tests skip.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "rlhfkit: not root, cannot apt-get install ${need[*]}; the tests that need them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "rlhfkit: apt-get install ${need[*]} failed; the tests that need them will skip" >&2
