#!/usr/bin/env bash
# A real Prometheus scrapes a real weir, and weir's series are checked through
# Prometheus's HTTP API (/api/v1/query): the target is up, weir_build_info carries the
# version, the ingest counter equals the events posted, pipeline and process series exist.
#
# Installs Debian's `prometheus` package (and curl) with apt-get if missing, so it runs on
# a fresh Debian machine as root; without root and without prometheus it fails, saying
# so. Nothing is skipped. Ephemeral ports and a temp dir; only the processes it started
# are stopped.
#
# WEIR=path/to/weir picks the binary; by default the debug build with the `fail` feature
# (what `cargo test --features fail` already built, so nothing is rebuilt in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'prometheus.sh: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || die "${need[*]} missing and not root: apt-get install ${need[*]}"
    command -v apt-get >/dev/null || die "${need[*]} missing and no apt-get"
    say "installing ${need[*]}"
    # The package would start its own service on :9090; this test runs its own instance.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if ((made_policy)); then rm -f "$policy"; fi
fi
say "$(prometheus --version 2>&1 | head -1)"

if [[ -z ${WEIR:-} ]]; then
    cargo build -q --features fail --bin weir
    WEIR=target/debug/weir
fi
[[ -x $WEIR ]] || die "no weir binary at $WEIR"

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

cat >"$tmp/weir.toml" <<EOF
[server]
listen = "127.0.0.1:0"

[storage]
data_dir = "$tmp/data"

[[topic]]
name = "clicks"
partitions = 2
default_event_type = "page.view"

[[pipeline]]
name = "pages"
source = "clicks"
group_by = ["/payload/page"]
window = { kind = "tumbling", size = "1m" }

[[pipeline.aggregate]]
name = "count"
fn = "count"
EOF
"$WEIR" run --config "$tmp/weir.toml" 2>"$tmp/weir.log" &
pids+=($!)
addr=
for _ in $(seq 300); do
    addr=$(sed -n 's/.*weir listening.*addr=\([0-9.:]*\).*/\1/p' "$tmp/weir.log" | head -1)
    [[ -n $addr ]] && break
    kill -0 "${pids[0]}" 2>/dev/null || die "weir exited: $(cat "$tmp/weir.log")"
    sleep 0.1
done
[[ -n $addr ]] || die "weir did not start: $(cat "$tmp/weir.log")"
say "weir on $addr"

posted=25
for i in $(seq "$posted"); do
    printf '{"event_id":"e%d","key":"u%d","payload":{"page":"p%d"}}\n' "$i" "$i" $((i % 3))
done | curl -sf --data-binary @- -H 'Content-Type: application/x-ndjson' \
    "http://$addr/v1/topics/clicks/events" >/dev/null || die "ingest failed"

# Prometheus cannot report a port it picked itself: try free-looking ports until one binds.
prom=
for _ in $(seq 10); do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
    cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: weir
    static_configs:
      - targets: ["$addr"]
EOF
    prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prom" \
        --web.listen-address="127.0.0.1:$port" 2>"$tmp/prometheus.log" &
    pid=$!
    for _ in $(seq 300); do
        if curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then
            prom="127.0.0.1:$port"
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -n $prom ]]; then
        pids+=("$pid")
        break
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
[[ -n $prom ]] || die "prometheus did not start: $(tail -5 "$tmp/prometheus.log")"
say "prometheus on $prom"

# The value of an instant query that returns one series, or nothing.
query() {
    { curl -sf --get "http://$prom/api/v1/query" --data-urlencode "query=$1" || true; } |
        sed -n 's/.*"value":\[[0-9.e+]*,"\([^"]*\)"\].*/\1/p'
}
# Polls a query until its value satisfies `test $value $op $want`.
expect() {
    local q=$1 op=$2 want=$3 got=
    for _ in $(seq 300); do
        got=$(query "$q")
        if [[ -n $got ]] && awk -v g="$got" -v w="$want" "BEGIN { exit !(g $op w) }"; then
            say "ok: $q = $got"
            return
        fi
        sleep 0.1
    done
    die "$q: got '${got}', want $op $want; weir log: $(tail -3 "$tmp/weir.log")"
}

expect 'up{job="weir"}' == 1
expect 'count(weir_build_info{job="weir", version!=""})' == 1
expect 'sum(weir_events_in_total{job="weir", topic="clicks"})' == "$posted"
expect 'sum(weir_pipeline_records_in_total{job="weir", pipeline="pages"})' == "$posted"
expect 'sum(weir_http_request_duration_seconds_count{job="weir", status="202"})' '>=' 1
expect 'process_resident_memory_bytes{job="weir"}' '>' 1000000
expect 'weir_disk_free_bytes{job="weir"}' '>' 0
version=$(curl -sf --get "http://$prom/api/v1/query" --data-urlencode 'query=weir_build_info' |
    sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
want=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[[ $version == "$want" ]] || die "weir_build_info version '$version', Cargo.toml says '$want'"
say "ok: weir_build_info version $version"
say "passed"
