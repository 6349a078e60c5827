#!/usr/bin/env bash
# Checks a built weir .deb: the files where the unit and the docs say they are, the
# config a conffile with data in /var/lib/weir, the maintainer scripts inside.
#
#     packaging/check-deb.sh target/debian/weir_VERSION_ARCH.deb
set -euo pipefail
deb=${1:?usage: packaging/check-deb.sh DEB}
fail() {
    echo "check-deb: $deb: $*" >&2
    exit 1
}

contents=$(dpkg-deb -c "$deb")
for path in \
    ./usr/bin/weir \
    ./usr/lib/systemd/system/weir.service \
    ./usr/lib/systemd/system/weir.service.d/memory.conf \
    ./etc/weir/weir.toml \
    ./usr/share/doc/weir/copyright \
    ./usr/share/doc/weir/systemd.md; do
    grep -q " $path\$" <<<"$contents" || fail "no $path in:
$contents"
done
grep -qE '^-rwxr-xr-x (root/root|0/0) .* ./usr/bin/weir$' <<<"$contents" ||
    fail "/usr/bin/weir is not root-owned 755"

info=$(dpkg-deb -I "$deb")
for script in postinst prerm postrm conffiles; do
    grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$script( |\$)" <<<"$info" ||
        fail "no $script in the control archive:
$info"
done
grep -q 'Depends:.*adduser' <<<"$info" || fail "does not depend on adduser"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$tmp"
grep -qx /etc/weir/weir.toml "$tmp/conffiles" || fail "/etc/weir/weir.toml is not a conffile"
for script in postinst prerm postrm; do
    sh -n "$tmp/$script" || fail "$script does not parse"
done
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./etc/weir/weir.toml
grep -qx 'data_dir = "/var/lib/weir"' "$tmp/etc/weir/weir.toml" ||
    fail "/etc/weir/weir.toml does not put data in /var/lib/weir"
echo "check-deb: $deb ok ($(stat -c %s "$deb") bytes)"
