#!/usr/bin/env bash
# CI's check of the packaging, cheap enough for every run (no release build):
#   - the shell scripts parse; the maintainer scripts do what postinst/prerm/postrm
#     promise, run against recording stand-ins for adduser, deb-systemd-helper,
#     deb-systemd-invoke and systemctl (first install, upgrade, remove, purge);
#   - the packaged /etc/weir/weir.toml is generated and passes check-config;
#   - the tarball builds around the given binary and holds what docs/systemd.md names;
#   - with cargo-deb installed, a .deb of the given binary passes check-deb.sh.
#
#     packaging/check-package.sh [WEIR_BINARY]    (default target/debug/weir)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/weir}
if [ ! -x "$bin" ]; then
    cargo build --quiet --bin weir
fi
fail() {
    echo "check-package: $*" >&2
    exit 1
}

for f in packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm; do
    sh -n "$f" || fail "$f does not parse"
    [ -x "$f" ] || fail "$f is not executable"
done
for f in packaging/*.sh; do
    bash -n "$f" || fail "$f does not parse"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- maintainer scripts, against stand-ins that write their arguments to calls.log ---
mkdir -p "$tmp/bin" "$tmp/scripts" "$tmp/run-systemd"
for tool in adduser deb-systemd-helper deb-systemd-invoke systemctl; do
    printf '#!/bin/sh\necho "%s $*" >>"%s/calls.log"\n' "$tool" "$tmp" >"$tmp/bin/$tool"
done
# getent knows the weir user once adduser ran.
cat >"$tmp/bin/getent" <<GETENT
#!/bin/sh
grep -q '^adduser' "$tmp/calls.log" 2>/dev/null
GETENT
chmod +x "$tmp/bin/"*
# The scripts' absolute paths moved into the sandbox: systemd "running", the helper "installed".
for f in postinst prerm postrm; do
    sed -e "s|/run/systemd/system|$tmp/run-systemd|g" \
        -e "s|/usr/bin/deb-systemd-helper|$tmp/bin/deb-systemd-helper|g" \
        "packaging/debian/$f" >"$tmp/scripts/$f"
done
run() {
    : >"$tmp/calls.log"
    PATH="$tmp/bin:$PATH" sh "$tmp/scripts/$1" "${@:2}" || fail "$* exited $?"
}
expect() {
    grep -qxF "$1" "$tmp/calls.log" || fail "$2: no '$1' among:
$(cat "$tmp/calls.log")"
}
refuse() {
    ! grep -q "$1" "$tmp/calls.log" || fail "$2: unexpected '$1' among:
$(cat "$tmp/calls.log")"
}

run postinst configure
expect "adduser --system --group --quiet --home /var/lib/weir --no-create-home --shell /usr/sbin/nologin weir" "first install"
expect "deb-systemd-helper enable weir.service" "first install"
expect "systemctl --system daemon-reload" "first install"
refuse "deb-systemd-invoke" "first install (enabled, not started)"

echo "adduser (the user exists)" >"$tmp/calls.log"
PATH="$tmp/bin:$PATH" sh "$tmp/scripts/postinst" configure 0.1.0
refuse "adduser --system" "upgrade (the user exists)"
expect "deb-systemd-invoke try-restart weir.service" "upgrade"
refuse "deb-systemd-invoke start" "upgrade"

run prerm upgrade 0.2.0
refuse "deb-systemd-invoke" "prerm upgrade (keeps running)"
run prerm remove
expect "deb-systemd-invoke stop weir.service" "prerm remove"
run postrm remove
expect "deb-systemd-helper mask weir.service" "postrm remove"
run postrm purge
expect "deb-systemd-helper purge weir.service" "postrm purge"
refuse "rm " "postrm purge (data kept)"
echo "check-package: maintainer scripts ok"

# --- the packaged config ---
packaging/gen-config.sh "$tmp/weir.toml"
grep -qx 'data_dir = "/var/lib/weir"' "$tmp/weir.toml" || fail "packaged config keeps ./data"
"$bin" check-config --config "$tmp/weir.toml" >/dev/null || fail "packaged config refused"
echo "check-package: packaged config ok"

# --- the tarball, around the given binary ---
tarball=$(packaging/build-tarball.sh --binary "$bin" | tail -n 1)
listing=$(tar -tzf "$tarball")
rm -f "$tarball"
for f in weir systemd/weir.service systemd/weir.service.d/memory.conf weir.toml \
    config.example.toml README.md LICENSE CHANGELOG.md docs/systemd.md; do
    grep -qE "^weir-[^/]+/$f\$" <<<"$listing" || fail "no $f in $tarball:
$listing"
done
echo "check-package: tarball ok"

# --- the .deb, if cargo-deb is here (installing it takes minutes: build-deb.sh does) ---
if cargo deb --version >/dev/null 2>&1; then
    out="$tmp/deb"
    mkdir -p "$out" target/packaging
    packaging/gen-config.sh target/packaging/weir.toml
    profile=$(basename "$(dirname "$(realpath "$bin")")")
    [ "$profile" = debug ] && profile=dev
    cargo deb --no-build --profile "$profile" --fast --quiet --output "$out" >/dev/null
    packaging/check-deb.sh "$out"/weir_*.deb
else
    echo "check-package: cargo-deb not installed, .deb not built (packaging/build-deb.sh installs it)"
fi
