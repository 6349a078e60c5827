#!/usr/bin/env bash
# Fails if a release binary is 15 MiB or more: weir ships to edge gateways, where the
# download and the flash it lives on are small. Release builds are LTO'd, one codegen
# unit, stripped (Cargo.toml [profile.release]).
#
#     packaging/check-size.sh target/release/weir
set -euo pipefail
readonly SIZE_MAX=$((15 << 20))
bin=${1:?usage: packaging/check-size.sh BINARY}
size=$(stat -c %s "$bin")
if [ "$size" -ge "$SIZE_MAX" ]; then
    echo "check-size: $bin is $size bytes, over 15 MiB" >&2
    exit 1
fi
echo "check-size: $bin is $size bytes ($((size >> 20)) MiB), under 15 MiB"
