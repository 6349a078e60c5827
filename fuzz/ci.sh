#!/usr/bin/env bash
# CI: every fuzz target replays its committed corpus (fuzz/corpus/<target>/, loaded and
# run in full before fuzzing starts), then fuzzes from it briefly. New inputs go to a
# scratch directory, never into the repository. Long runs are by hand (fuzz/README.md).
#
#   WEIR_FUZZ_SECONDS   seconds of fuzzing per target after the replay (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz needs nightly flags (-Zsanitizer); the stable toolchain allows them so.
export RUSTC_BOOTSTRAP=1
seconds=${WEIR_FUZZ_SECONDS:-15}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# target:max_len. -rss_limit_mb and -timeout make unbounded allocation and hangs failures.
for spec in batch_decode:65536 recovery_scan:65536 body_parse:8192 config_load:8192; do
    target=${spec%%:*}
    mkdir -p "$scratch/$target"
    cargo fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len="${spec#*:}" -rss_limit_mb=512 -timeout=5 \
        -print_final_stats=1
done
