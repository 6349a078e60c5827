#!/usr/bin/env bash
# Builds the .deb into target/debian/: the release binary (LTO, stripped), the unit and
# its memory drop-in, /etc/weir/weir.toml (a conffile, generated from
# config.example.toml), the maintainer scripts of packaging/debian/. Installs cargo-deb
# first if it is missing. Extra arguments go to cargo-deb (e.g. --no-build to package
# a target/release/weir built before).
#
#     packaging/build-deb.sh [CARGO_DEB_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked
fi
packaging/gen-config.sh target/packaging/weir.toml
cargo deb --locked "$@"
packaging/check-size.sh target/release/weir
deb=$(ls -t target/debian/weir_*.deb | head -n 1)
packaging/check-deb.sh "$deb"
