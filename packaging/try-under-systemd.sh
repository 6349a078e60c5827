#!/usr/bin/env bash
# Installs a weir .deb on a throwaway copy of this machine booted under systemd
# (systemd-nspawn over an overlay of /, private network) and checks what the package
# and the unit promise, for real: first install creates the user and enables weir
# without starting it; start reaches READY (StatusText "serving on ..."), serves, keeps
# petting the watchdog; a frozen weir is killed by the watchdog and restarted, and
# recovers its log; a reinstall (upgrade) restarts it and keeps an edited conffile;
# remove stops it; purge keeps /var/lib/weir. Nothing leaves the container: the overlay
# and the mounts live in a private mount namespace.
#
#     sudo packaging/try-under-systemd.sh target/debian/weir_VERSION_ARCH.deb
#
# Needs root, systemd-nspawn (package systemd-container) and overlayfs; about two
# minutes. Not part of CI (the CI machine may lack all three); run it after changing
# the unit or the maintainer scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(realpath "${1:?usage: packaging/try-under-systemd.sh DEB}")
command -v systemd-nspawn >/dev/null || {
    echo "try-under-systemd: systemd-nspawn not found (apt-get install systemd-container)" >&2
    exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/results"

cat >"$work/results/check.sh" <<'CHECK'
#!/bin/bash
# Runs inside the container as weircheck.service; writes PASS/FAIL lines to /results/result.
set -u
exec >>/results/out.log 2>&1
pass() { echo "PASS $*" | tee -a /results/result; }
fail() { echo "FAIL $*" | tee -a /results/result; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
prop() { systemctl show weir -p "$1" --value; }
wait_for() { # seconds, description, command...
    local n=$1 what=$2; shift 2
    for _ in $(seq "$n"); do "$@" && { pass "$what"; return; }; sleep 1; done
    fail "$what"
}
healthz() { [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' localhost:8080/healthz)" = 200 ]; }
events() { curl -s -m 2 localhost:8080/v1/topics/clickstream | grep -o '"end_offsets":\[[^]]*\]'; }

check "dpkg -i" dpkg -i /root/weir.deb
check "user weir created" getent passwd weir
check "enabled on first install" test "$(systemctl is-enabled weir)" = enabled
check "not started on first install" test "$(systemctl is-active weir)" = inactive
check "conffile" grep -qx /etc/weir/weir.toml /var/lib/dpkg/info/weir.conffiles

check "systemctl start" systemctl start weir
check "READY: status serving" test "$(prop StatusText)" = "serving on 127.0.0.1:8080"
check "healthz" healthz
check "ingest" curl -sf -m 2 localhost:8080/click -d "{\"user_id\":\"u\",\"page_id\":\"p\",\"timestamp\":\"$(date -u '+%F %T')\"}"
before=$(events)
check "memory ceiling from the drop-in" test "$(prop MemoryMax)" = 1073741824
check "data in /var/lib/weir, owned by weir" test "$(stat -c %U /var/lib/weir/format_version)" = weir

# The watchdog, shortened so the test is quick: still petted while running...
mkdir -p /etc/systemd/system/weir.service.d
printf '[Service]\nWatchdogSec=4s\nTimeoutAbortSec=3s\n' >/etc/systemd/system/weir.service.d/zz-test.conf
systemctl daemon-reload && systemctl restart weir
pid=$(prop MainPID)
sleep 10
check "watchdog petted (10 s of a 4 s watchdog)" test "$(prop MainPID)/$(prop NRestarts)" = "$pid/0"
# ...and a frozen weir is killed and restarted, its log recovered.
kill -STOP "$pid"
wait_for 40 "watchdog restarts a frozen weir" \
    bash -c "[ \"\$(systemctl show weir -p NRestarts --value)\" = 1 ] && systemctl is-active -q weir"
wait_for 20 "healthz after the watchdog restart" healthz
check "events kept across the kill" test "$(events)" = "$before"
rm /etc/systemd/system/weir.service.d/zz-test.conf
rmdir /etc/systemd/system/weir.service.d
systemctl daemon-reload && systemctl restart weir

echo "# edited by the admin" >>/etc/weir/weir.toml
pid=$(prop MainPID)
check "dpkg -i again (upgrade)" dpkg -i /root/weir.deb
check "upgrade restarted weir" bash -c "[ \"\$(systemctl show weir -p MainPID --value)\" != $pid ] && systemctl is-active -q weir"
check "upgrade kept the edited conffile" grep -qx "# edited by the admin" /etc/weir/weir.toml
wait_for 20 "healthz after the upgrade" healthz
check "events kept across the upgrade" test "$(events)" = "$before"
check "a stopped weir stays stopped on upgrade" bash -c "systemctl stop weir && dpkg -i /root/weir.deb && ! systemctl is-active -q weir"

systemctl start weir
check "dpkg -r" dpkg -r weir
check "remove stopped weir" test "$(systemctl is-active weir)" = inactive
check "remove kept the data" test -f /var/lib/weir/format_version
check "dpkg -P" dpkg -P weir
check "purge removed the config" test ! -e /etc/weir/weir.toml
check "purge kept the data" test -f /var/lib/weir/format_version
echo done >>/results/result
systemctl poweroff
CHECK

cat >"$work/results/weircheck.service" <<'UNIT'
[Unit]
Description=weir package check
After=basic.target
[Service]
Type=oneshot
ExecStart=/bin/bash /results/check.sh
UNIT
printf '[Unit]\nDescription=weir package check\nWants=weircheck.service\n' \
    >"$work/results/weircheck.target"

unshare -m --propagation private bash -s "$work" "$deb" <<'BOOT'
set -euo pipefail
work=$1 deb=$2
mkdir -p "$work/ov"
mount -t tmpfs tmpfs "$work/ov"
mkdir -p "$work/ov/up" "$work/ov/work" "$work/ov/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/ov/up,workdir=$work/ov/work" "$work/ov/root"
root=$work/ov/root
# Boot into the check alone: none of this machine's enabled services, a new machine id.
rm -rf "$root/etc/systemd/system/multi-user.target.wants"
echo uninitialized >"$root/etc/machine-id"
# Container images forbid service starts from maintainer scripts (exit 101); a real
# machine does not.
rm -f "$root/usr/sbin/policy-rc.d"
cp "$work/results/weircheck.service" "$work/results/weircheck.target" "$root/etc/systemd/system/"
rm -f "$root/usr/bin/weir"
rm -rf "$root/etc/weir" "$root/var/lib/weir" "$root/etc/systemd/system/weir.service.d"
cp "$deb" "$root/root/weir.deb"
# nspawn keeps its state under /run/systemd, which must be a tmpfs.
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
timeout 300 systemd-nspawn --quiet -D "$root" --private-network --register=no --keep-unit \
    --link-journal=no -M weir-check --bind="$work/results:/results" \
    -b -- systemd.unit=weircheck.target >"$work/console.log" 2>&1 || true
BOOT

cat "$work/results/result" 2>/dev/null || true
if ! grep -qx done "$work/results/result" 2>/dev/null || grep -q '^FAIL' "$work/results/result"; then
    echo "--- check log" >&2
    cat "$work/results/out.log" >&2 || true
    tail -n 30 "$work/console.log" >&2 || true
    echo "try-under-systemd: FAILED" >&2
    exit 1
fi
echo "try-under-systemd: all passed"
