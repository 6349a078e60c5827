#!/usr/bin/env bash
# benches/ingest.sh: weir's ingest figures beside the hyper hello-world ceiling, measured
# in the same run on the same cores with the same load generator (weir-loadgen), plus wrk
# for the single-event POST as ../shared/bench/http_ceiling.sh measures it. `single` also
# runs benches/fsync_ceiling (that ceiling plus a write and a group-commit fdatasync per
# POST, nothing else): the most a durable single-event POST can reach on this machine,
# the bound for weir's `always` figure.
#   RUNS=3 DUR=10 benches/ingest.sh [single] [ndjson] [sustained] [pipeline_ab]
# PIPELINE=1 runs weir with the seed's `page_views` pipeline consuming the topic (the
# ceiling and the peers are unchanged). Events carry the current time (--live-time).
# `pipeline_ab` measures what the pipeline costs single-event ingest: each run measures
# the ceiling, weir (`interval`) without and weir with `page_views`, in turn, and the
# ratios are taken run by run (RUNS=7 DUR=6 is a few minutes).
# Prints medians; raw outputs in $RESULTS_DIR/weir (default /tmp/weir-bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; DUR=${DUR:-10}; PARTS=${*:-single ndjson}; PIPELINE=${PIPELINE:-0}
SUFFIX=""; [ "$PIPELINE" = 1 ] && SUFFIX="_pipeline"
SHARED=${SHARED:-$(cd .. && pwd)/shared/bench}
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/weir; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench; mkdir -p "$SCRATCH"
LOCK=/tmp/bench.lock
. benches/ingest_config.sh
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null

cargo build --profile bench --bins -q
WEIR=target/release/weir; LOADGEN=target/release/weir-loadgen
export CARGO_TARGET_DIR=${PEERS_TARGET:-/tmp/peers-target}
BUILD_SRC=$(mktemp -d); cp -r "$SHARED/http_ceiling" "$BUILD_SRC/"; chmod -R u+w "$BUILD_SRC"
(cd "$BUILD_SRC/http_ceiling" && cargo build --release -q)
CEILING=$CARGO_TARGET_DIR/release/http_ceiling
(cd benches/fsync_ceiling && cargo build --release -q)
FSYNC_CEILING=$CARGO_TARGET_DIR/release/fsync_ceiling
unset CARGO_TARGET_DIR

SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
trap stop_server EXIT

start_weir() { # fsync mode [pipeline: 0 or 1, default $PIPELINE]
  stop_server; rm -rf "$SCRATCH/data"
  ingest_config "$SCRATCH/weir.toml" "$SCRATCH/data" "$1" "${2:-$PIPELINE}"
  "$WEIR" run --config "$SCRATCH/weir.toml" 2> "$OUT/weir-$1.log" & SPID=$!
  for _ in $(seq 100); do curl -sf localhost:8091/readyz >/dev/null && return; sleep 0.1; done
  echo "weir did not start"; cat "$OUT/weir-$1.log"; exit 1
}
start_ceiling() {
  stop_server; "$CEILING" 127.0.0.1:8092 2>/dev/null & SPID=$!
  for _ in $(seq 50); do curl -sf localhost:8092/hello >/dev/null && return; sleep 0.1; done
}
start_fsync_ceiling() {
  stop_server; rm -rf "$SCRATCH/fsync_ceiling"
  "$FSYNC_CEILING" 127.0.0.1:8093 "$SCRATCH/fsync_ceiling" 4 2>/dev/null & SPID=$!
  for _ in $(seq 50); do curl -sf -d x localhost:8093/ingest >/dev/null && return; sleep 0.1; done
  echo "fsync_ceiling did not start"; exit 1
}
run_once() { # tag addr path conns events run
  local tag=$1 addr=$2 path=$3 c=$4 e=$5 i=$6
  # Runs against one server need ids of their own (A, B, ...: one byte, as the default),
  # or dedup answers a run's events as the last run's duplicates.
  flock "$LOCK" "$LOADGEN" --addr "$addr" --path "$path" --connections "$c" --events "$e" \
    --duration "$DUR" --warmup 2 --live-time --id-prefix "$(printf "\\x$(printf %x $((64 + i)))")" \
    > "$OUT/$tag.$i.json" 2>/dev/null
}
loadgen() { # tag addr path conns events: RUNS runs against one server
  rm -f "$OUT/$1".[0-9]*.json
  for i in $(seq 1 "$RUNS"); do run_once "$@" "$i"; done
  median "$1" eps
  duplicates "$2"
}
duplicates() { # addr: a weir that answered any event as a duplicate measured no append
  local d
  d=$(curl -s "$1/metrics" | awk '/^weir_duplicate_events_total/ {s += $2} END {print s + 0}')
  if [ "$d" != 0 ]; then echo "  WARNING: $d events were answered as duplicates: not appended"; fi
}
wrkrun() { # tag url script
  local tag=$1 url=$2 script=$3
  for i in $(seq 1 "$RUNS"); do
    flock "$LOCK" wrk -t2 -c64 -d"${DUR}s" -s "$script" "$url" > "$OUT/$tag.$i.txt"
  done
  printf '%s req/s median ' "$tag"
  grep -h Requests/sec "$OUT/$tag".[0-9]*.txt | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
median() { # tag field
  python3 - "$OUT" "$1" "$2" <<'PY'
import glob, json, statistics, sys
out, tag, field = sys.argv[1:]
xs = [json.load(open(f))[field] for f in sorted(glob.glob(f"{out}/{tag}.[0-9]*.json"))]
p50 = [json.load(open(f))["p50_us"] for f in sorted(glob.glob(f"{out}/{tag}.[0-9]*.json"))]
print(f"{tag} {field} median {statistics.median(xs):.0f} runs {[round(x) for x in xs]} p50_us median {statistics.median(p50):.0f}")
PY
}
ratios() { # base tag...: each tag's runs over the base's runs of the same index
  python3 - "$OUT" "$@" <<'PY'
import json, statistics, sys
out, base, *tags = sys.argv[1:]
def runs(tag):
    i, xs = 1, []
    while True:
        try:
            xs.append(json.load(open(f"{out}/{tag}.{i}.json"))["eps"])
        except FileNotFoundError:
            return xs
        i += 1
b = runs(base)
for t in tags:
    r = [x / y for x, y in zip(runs(t), b)]
    print(f"{t} / {base}: median {statistics.median(r):.2f} runs {[round(x, 2) for x in r]}")
PY
}
has() { [[ " $PARTS " == *" $1 "* ]]; }

if has single; then
  # Interleaved: each run measures every server once, in turn, each started afresh (weir
  # on an empty data dir), so the machine's drift over minutes falls on all of them
  # alike; the ratios are taken run by run, then their median.
  tags="ceiling_post_c64 fsync_ceiling_post_c64 weir_interval_post_c64$SUFFIX weir_always_post_c64$SUFFIX"
  for t in $tags; do rm -f "$OUT/$t".[0-9]*.json; done
  for i in $(seq 1 "$RUNS"); do
    start_ceiling; run_once ceiling_post_c64 127.0.0.1:8092 /ingest 64 1 "$i"
    start_fsync_ceiling; run_once fsync_ceiling_post_c64 127.0.0.1:8093 /ingest 64 1 "$i"
    for mode in interval always; do
      start_weir "$mode"
      run_once "weir_${mode}_post_c64$SUFFIX" 127.0.0.1:8091 /v1/topics/clickstream/events 64 1 "$i"
      duplicates 127.0.0.1:8091
    done
  done
  for t in $tags; do median "$t" eps; done
  ratios ceiling_post_c64 "weir_interval_post_c64$SUFFIX" fsync_ceiling_post_c64 "weir_always_post_c64$SUFFIX"
  ratios fsync_ceiling_post_c64 "weir_always_post_c64$SUFFIX"
  # wrk as ../shared/bench/http_ceiling.sh runs it: RUNS runs a server, one server after another.
  start_ceiling
  wrkrun ceiling_post_wrk http://127.0.0.1:8092/ingest "$SHARED/lua/post_ingest.lua"
  for mode in interval always; do
    start_weir "$mode"
    wrkrun "weir_${mode}_post_wrk$SUFFIX" http://127.0.0.1:8091/v1/topics/clickstream/events benches/lua/post_event.lua
  done
fi
if has pipeline_ab; then
  tags="ceiling_ab weir_interval_ab weir_interval_ab_pipeline"
  for t in $tags; do rm -f "$OUT/$t".[0-9]*.json; done
  for i in $(seq 1 "$RUNS"); do
    start_ceiling; run_once ceiling_ab 127.0.0.1:8092 /ingest 64 1 "$i"
    start_weir interval 0; run_once weir_interval_ab 127.0.0.1:8091 /v1/topics/clickstream/events 64 1 "$i"
    start_weir interval 1; run_once weir_interval_ab_pipeline 127.0.0.1:8091 /v1/topics/clickstream/events 64 1 "$i"
  done
  stop_server
  for t in $tags; do median "$t" eps; done
  ratios ceiling_ab weir_interval_ab weir_interval_ab_pipeline
  ratios weir_interval_ab weir_interval_ab_pipeline
fi
if has ndjson; then
  for mode in interval always; do
    # Each run on an empty data dir with the page cache's dirty pages written back first:
    # runs on one growing log measure how far behind the kernel's writeback is, not weir
    # (the 120 s `sustained` run is the figure for that).
    # `always` answers after the group's fsync, so it needs more requests in flight to
    # fill a round: 16 connections (4 reach about 0.71 of fio's bandwidth, 8 about 0.77).
    conns=4; [ "$mode" = always ] && conns=16
    tag="weir_${mode}_ndjson1000_c$conns$SUFFIX"
    rm -f "$OUT/$tag".[0-9]*.json   # a longer earlier set's runs would join the median
    for r in $(seq 1 "$RUNS"); do   # not i: loadgen's loop sets i
      start_weir "$mode"; sync
      RUNS=1 loadgen "$tag.run$r" 127.0.0.1:8091 /v1/topics/clickstream/events "$conns" 1000 >/dev/null
      mv "$OUT/$tag.run$r.1.json" "$OUT/$tag.$r.json"
    done
    median "$tag" eps
    du -sb "$SCRATCH/data" > "$OUT/weir_${mode}_ndjson_du.txt"
    curl -s localhost:8091/v1/topics > "$OUT/weir_${mode}_ndjson_topics.json"
    python3 - "$OUT/weir_${mode}_ndjson_du.txt" "$OUT/weir_${mode}_ndjson_topics.json" <<'PY'
import json, sys
du = int(open(sys.argv[1]).read().split()[0]); t = json.load(open(sys.argv[2]))["topics"][0]
n = sum(t["end_offsets"]); print(f"  bytes on disk per event: {du / n:.0f} ({du} bytes, {n} events)")
PY
  done
fi
if has sustained; then
  start_weir interval
  RUNS=1 DUR=120 loadgen weir_interval_ndjson1000_120s 127.0.0.1:8091 /v1/topics/clickstream/events 4 1000
fi
