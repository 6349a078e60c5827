#!/usr/bin/env bash
# benches/read.sh: weir's read figures: pull (cursor pages of limit=10000, answers of
# several MiB) with a warm page cache and a cold one, one SSE stream from the start of
# the log, and 100 SSE streams tailing while ingest runs at 50,000 events/s.
#   RUNS=3 FILL_SECS=... benches/read.sh [pull] [sse] [tail]
# Fills a topic with about FILL_BYTES (default 1 GiB) under fsync = "interval" first.
# Prints medians; raw outputs in $RESULTS_DIR/read (default /tmp/weir-bench-results).
# The cold run drops the page cache (echo 3 > /proc/sys/vm/drop_caches): root only.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; PARTS=${*:-pull sse tail}
FILL_BYTES=${FILL_BYTES:-$((1 << 30))}
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/read; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench-read
LOCK=/tmp/bench.lock
ADDR=127.0.0.1:8093

cargo build --profile bench --bins -q
WEIR=target/release/weir; LOADGEN=target/release/weir-loadgen; READGEN=target/release/weir-readgen

SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
cleanup() { stop_server; rm -rf "$SCRATCH"; }
trap cleanup EXIT

mkdir -p "$SCRATCH"
cat > "$SCRATCH/weir.toml" <<TOML
[server]
listen = "$ADDR"
max_streams = 256
[storage]
data_dir = "$SCRATCH/data"
[[topic]]
name = "clickstream"
partitions = 4
fsync = "interval"
key_field = "/payload/user_id"
TOML
"$WEIR" run --config "$SCRATCH/weir.toml" 2> "$OUT/weir.log" & SPID=$!
for _ in $(seq 100); do curl -sf "$ADDR/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$ADDR/readyz" >/dev/null || { echo "weir did not start"; cat "$OUT/weir.log"; exit 1; }

topic_bytes() { curl -s "$ADDR/v1/topics/clickstream" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])'; }
read_bytes() { curl -s "$ADDR/metrics" | awk '/^weir_read_bytes_total\{/ {s += $2} END {printf "%.0f\n", s}'; }

# Fill: NDJSON requests of 1000 events until the topic holds FILL_BYTES.
# Each fill run its own ids (`--id-prefix`): dedup would take a repeat as duplicates.
fill=0
while [ "$(topic_bytes)" -lt "$FILL_BYTES" ]; do
  fill=$((fill + 1))
  flock "$LOCK" "$LOADGEN" --addr "$ADDR" --path /v1/topics/clickstream/events --connections 4 \
    --events 1000 --duration 5 --warmup 0 --id-prefix "F$fill" > "$OUT/fill.json" 2>/dev/null
done
curl -s "$ADDR/v1/topics/clickstream" > "$OUT/topic.json"
echo "filled: $(topic_bytes) bytes, $(python3 -c 'import json; print(sum(json.load(open("'"$OUT/topic.json"'"))["end_offsets"]))') events"

median() { # tag field
  python3 - "$OUT" "$1" "$2" <<'PY'
import glob, json, statistics, sys
out, tag, field = sys.argv[1:]
xs = [json.load(open(f))[field] for f in sorted(glob.glob(f"{out}/{tag}.[0-9]*.json"))]
print(f"{tag} {field} median {statistics.median(xs):.1f} runs {[round(x, 1) for x in xs]}")
PY
}
pull_run() { # tag i
  local before after
  before=$(read_bytes)
  flock "$LOCK" "$READGEN" --addr "$ADDR" --mode pull --duration 600 > "$OUT/$1.$2.json" 2>/dev/null
  after=$(read_bytes)
  python3 - "$OUT/$1.$2.json" "$before" "$after" <<'PY'
import json, sys
f, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(f)); r["envelope_mbps"] = (after - before) / r["seconds"] / 1e6
json.dump(r, open(f, "w"))
PY
}
has() { [[ " $PARTS " == *" $1 "* ]]; }
# Baseline: the same segment files read straight from the page cache (cat), in MB/s of
# file bytes; no server, no framing. Weir's pull is quoted as a share of it.
cat_run() { # tag i
  python3 - "$SCRATCH/data/topics/clickstream" "$OUT/$1.$2.json" <<'PY'
import glob, json, os, subprocess, sys, time
files = sorted(glob.glob(f"{sys.argv[1]}/*/*.log"))
size = sum(os.path.getsize(f) for f in files)
t = time.monotonic()
subprocess.run(["flock", "/tmp/bench.lock", "sh", "-c", 'cat "$@" > /dev/null', "cat", *files], check=True)
secs = time.monotonic() - t
json.dump({"mbps": size / secs / 1e6, "bytes": size, "seconds": secs}, open(sys.argv[2], "w"))
PY
}

if has pull; then
  pull_run pull_warmup 0   # brings the log into the page cache
  for i in $(seq 1 "$RUNS"); do pull_run pull_warm "$i"; cat_run cat_warm "$i"; done
  median pull_warm envelope_mbps; median pull_warm mbps; median pull_warm eps
  median cat_warm mbps
  if [ -w /proc/sys/vm/drop_caches ]; then
    sync; echo 3 > /proc/sys/vm/drop_caches
    pull_run pull_cold 1
    sync; echo 3 > /proc/sys/vm/drop_caches
    cat_run cat_cold 1
    median pull_cold envelope_mbps; median pull_cold eps; median cat_cold mbps
  else
    echo "pull_cold skipped: cannot drop the page cache (not root)"
  fi
fi
if has sse; then
  for i in $(seq 1 "$RUNS"); do
    flock "$LOCK" "$READGEN" --addr "$ADDR" --mode sse --streams 1 --from earliest --duration 10 > "$OUT/sse_one.$i.json" 2>/dev/null
  done
  median sse_one eps
fi
if has tail; then
  # 100 live tails while ingest runs at 50 requests/s of 1000 events.
  "$LOADGEN" --addr "$ADDR" --path /v1/topics/clickstream/events --connections 4 --events 1000 \
    --rate 50 --duration 22 --warmup 0 > "$OUT/tail_ingest.json" 2>"$OUT/tail_ingest.txt" & LPID=$!
  sleep 1
  "$READGEN" --addr "$ADDR" --mode sse --streams 100 --from latest --duration 20 > "$OUT/tail_sse.1.json" 2>"$OUT/tail_sse.txt"
  wait "$LPID" || true
  cat "$OUT/tail_ingest.txt" "$OUT/tail_sse.txt"
  median tail_sse eps; median tail_sse slowest_eps; median tail_sse lag_max
fi
