#!/usr/bin/env bash
# benches/freshness.sh: how soon an ingested event shows in its pipeline's open window.
#   RUNS=3 DUR=20 RATE=50000 benches/freshness.sh
# Runs weir on config.example.toml as it is (topic `clickstream` with fsync = "always",
# the seed pipeline `page_views`) in a scratch data dir. weir-loadgen sends RATE events/s
# of the current time (NDJSON requests of EVENTS events, open loop) while weir-readgen
# --mode freshness posts one probe event every 20 ms under a key of its own and polls
# the pipeline's answer for that key every millisecond: the time from sending the probe
# to the first answer holding it. Prints medians over runs of the probes' p50, p99, max.
# Raw outputs in $RESULTS_DIR/freshness (default /tmp/weir-bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; DUR=${DUR:-20}; RATE=${RATE:-50000}; EVENTS=${EVENTS:-50}
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/freshness; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench-freshness
LOCK=/tmp/bench.lock
ADDR=127.0.0.1:8095

cargo build --profile bench --bins -q
WEIR=target/release/weir

SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
cleanup() { stop_server; rm -rf "$SCRATCH"; }
trap cleanup EXIT

for i in $(seq 1 "$RUNS"); do
  stop_server; rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
  "$WEIR" run --config config.example.toml --data-dir "$SCRATCH/data" --listen "$ADDR" \
    2> "$OUT/weir.$i.log" & SPID=$!
  for _ in $(seq 100); do curl -sf "$ADDR/readyz" >/dev/null && break; sleep 0.1; done
  # 100 requests/s per connection at the default rate: enough connections that a
  # request waiting for its fsync round does not hold the next one back.
  flock "$LOCK" bash -c '
    "$1" --addr "$2" --live-time --events "$3" --rate "$4" --connections 10 \
      --duration "$5" --warmup 1 > "$6/load.$7.json" 2> "$6/load.$7.txt" &
    LPID=$!
    sleep 1
    "$8" --mode freshness --addr "$2" --duration "$(( $5 - 1 ))" > "$6/probe.$7.json" 2> "$6/probe.$7.txt"
    wait $LPID' _ target/release/weir-loadgen "$ADDR" "$EVENTS" "$(( RATE / EVENTS ))" "$DUR" "$OUT" "$i" \
    target/release/weir-readgen
  cat "$OUT/probe.$i.txt" "$OUT/load.$i.txt"
done
stop_server
python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
probes = [json.load(open(f"{out}/probe.{i}.json")) for i in range(1, runs + 1)]
loads = [json.load(open(f"{out}/load.{i}.json")) for i in range(1, runs + 1)]
med = lambda k, xs: statistics.median(x[k] for x in xs)
print(f"freshness medians over {runs} runs at {med('eps', loads):.0f} events/s ingested: "
      f"p50 {med('p50_ms', probes):.2f} ms, p99 {med('p99_ms', probes):.2f} ms, "
      f"max {med('max_ms', probes):.2f} ms (202 alone: p50 {med('ack_p50_ms', probes):.2f} ms, "
      f"p99 {med('ack_p99_ms', probes):.2f} ms; from the 202 on: p50 {med('after_ack_p50_ms', probes):.2f} ms, "
      f"p99 {med('after_ack_p99_ms', probes):.2f} ms); runs p99 {[p['p99_ms'] for p in probes]}, "
      f"missed {[p['missed'] for p in probes]}")
PY
