#!/usr/bin/env bash
# Checks the systemd unit and its drop-in: `systemd-analyze verify` says nothing about
# them (a warning counts as a failure), and `systemd-analyze security` rates the unit's
# exposure at most 2.5. Needs systemd-analyze (package systemd, 250 or later for
# --offline) but no running systemd.
#
#     packaging/check-systemd.sh [WEIR_BINARY]
#
# verify wants the unit's commands to exist: the check runs a copy whose /usr/bin/weir
# is WEIR_BINARY (default target/debug/weir, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# Exposure ratings are tenths here: 25 is systemd-analyze's 2.5.
readonly EXPOSURE_MAX=25

if ! command -v systemd-analyze >/dev/null; then
    echo "check-systemd: systemd-analyze not found (apt-get install systemd)" >&2
    exit 1
fi
bin=${1:-target/debug/weir}
if [ ! -x "$bin" ]; then
    cargo build --quiet --bin weir
fi
bin=$(realpath "$bin")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/weir.service.d"
sed "s|/usr/bin/weir|$bin|g" systemd/weir.service >"$tmp/weir.service"
cp systemd/weir.service.d/*.conf "$tmp/weir.service.d/"
if grep -q /usr/bin/weir "$tmp/weir.service"; then
    echo "check-systemd: /usr/bin/weir left in the unit copy" >&2
    exit 1
fi

# The directory first in the search path, so verify reads the drop-ins beside the copy.
out=$(SYSTEMD_UNIT_PATH="$tmp:" systemd-analyze verify "$tmp/weir.service" 2>&1) || {
    echo "$out" >&2
    echo "check-systemd: systemd-analyze verify failed" >&2
    exit 1
}
if [ -n "$out" ]; then
    echo "$out" >&2
    echo "check-systemd: systemd-analyze verify warned (see above)" >&2
    exit 1
fi
echo "check-systemd: verify ok (systemd/weir.service, systemd/weir.service.d/)"

report=$(systemd-analyze security --offline=true --threshold="$EXPOSURE_MAX" \
    systemd/weir.service 2>&1) || {
    echo "$report" >&2
    echo "check-systemd: exposure above 2.5 (see above)" >&2
    exit 1
}
echo "check-systemd: $(grep 'Overall exposure' <<<"$report")"
