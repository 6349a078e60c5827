#!/usr/bin/env bash
# Builds target/dist/weir-VERSION-ARCH-linux.tar.gz: the release binary, the systemd
# unit and its memory drop-in, the example config and the packaged one (data in
# /var/lib/weir), README, LICENSE, CHANGELOG and docs/systemd.md (how to install it by
# hand). Prints the archive's path.
#
#     packaging/build-tarball.sh [--binary PATH]
#
# --binary packages a weir built elsewhere instead of building the release one (the CI
# check packages the debug binary the tests built, to keep the script working cheaply).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=
if [ "${1:-}" = "--binary" ]; then
    bin=${2:?--binary needs a path}
else
    cargo build --release --locked --bin weir
    bin=target/release/weir
    packaging/check-size.sh "$bin"
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
name="weir-$version-$(uname -m)-linux"
dist=target/dist
stage="$dist/$name"
rm -rf "$stage" "$stage.tar.gz"
mkdir -p "$stage/systemd/weir.service.d" "$stage/docs"
install -m 755 "$bin" "$stage/weir"
install -m 644 systemd/weir.service "$stage/systemd/"
install -m 644 systemd/weir.service.d/*.conf "$stage/systemd/weir.service.d/"
install -m 644 config.example.toml README.md LICENSE CHANGELOG.md "$stage/"
install -m 644 docs/systemd.md "$stage/docs/"
packaging/gen-config.sh "$stage/weir.toml"
chmod 644 "$stage/weir.toml"

# Owner and order fixed, times from the last commit: the same tree gives the same tar.
mtime=$(git log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
    -C "$dist" -czf "$stage.tar.gz" "$name"
rm -rf "$stage"
echo "$stage.tar.gz"
