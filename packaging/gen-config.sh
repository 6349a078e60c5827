#!/usr/bin/env bash
# Writes the packaged /etc/weir/weir.toml to OUT: config.example.toml with its data_dir
# moved to /var/lib/weir (the unit's StateDirectory). Generated at every package build,
# so it never drifts from the example; fails if the example's data_dir line changed
# shape, rather than shipping a config that writes to ./data.
#
#     packaging/gen-config.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: packaging/gen-config.sh OUT}

readonly from='data_dir = "./data"'
readonly to='data_dir = "/var/lib/weir"'
count=$(grep -cxF "$from" config.example.toml || true)
if [ "$count" != 1 ]; then
    echo "gen-config: expected one line '$from' in config.example.toml, found $count" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
{
    cat <<'HEAD'
# /etc/weir/weir.toml: the config of the weir service (systemd/weir.service).
# The package made it from weir's config.example.toml with data_dir = /var/lib/weir,
# the directory systemd creates for the service (StateDirectory=weir). After an edit:
#
#     weir check-config --config /etc/weir/weir.toml && systemctl restart weir
#
# A data_dir elsewhere needs ReadWritePaths= (`systemctl edit weir`); so does anything
# else weir should write to. Listening on a port below 1024 needs a capability: see
# /usr/share/doc/weir/systemd.md.
#
HEAD
    sed "s|^${from}\$|${to}|" config.example.toml
} >"$out.tmp"
mv "$out.tmp" "$out"
