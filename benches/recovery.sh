#!/usr/bin/env bash
# benches/recovery.sh: time from starting weir after kill -9 to the first 202, with
# about 1 GiB in the log (warm page cache), and idle RSS of weir on config.example.toml.
#   RUNS=3 GIB=1 [FILL=ndjson|single] benches/recovery.sh
# FILL=ndjson (the default) writes requests of 1,000 events; FILL=single one event per
# request, as most HTTP clients send them: batches of one record, the most batches a GiB
# can hold, which is what the recovery scan and the dedup table's rebuild walk.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; GIB=${GIB:-1}; FILL=${FILL:-ndjson}
case $FILL in
  ndjson) fill_args=(--connections 4 --events 1000 --duration 2) ;;
  single) fill_args=(--connections 64 --events 1 --duration 5) ;;
  *) echo "FILL is ndjson or single"; exit 1 ;;
esac
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/weir; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-recovery; rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
cargo build --profile bench --bins -q
WEIR=$PWD/target/release/weir; LOADGEN=$PWD/target/release/weir-loadgen
cat > "$SCRATCH/weir.toml" <<TOML
[server]
listen = "127.0.0.1:8093"
[storage]
data_dir = "$SCRATCH/data"
[[topic]]
name = "clickstream"
partitions = 4
fsync = "interval"
key_field = "/payload/user_id"
TOML

"$WEIR" run --config "$SCRATCH/weir.toml" 2> "$OUT/recovery-fill.log" & PID=$!
until curl -sf localhost:8093/readyz >/dev/null; do sleep 0.1; done
target=$((GIB * 1024 * 1024 * 1024))
fill=0   # each run its own ids (`--id-prefix`): dedup would take a repeat as duplicates
while [ "$(du -sb "$SCRATCH/data" | cut -f1)" -lt "$target" ]; do
  fill=$((fill + 1))
  "$LOADGEN" --addr 127.0.0.1:8093 "${fill_args[@]}" --warmup 0 \
    --id-prefix "F$fill" >/dev/null 2>&1
done
echo "log holds $(du -sb "$SCRATCH/data" | cut -f1) bytes ($FILL requests)"

# BASELINE=path/to/another/weir times that binary too, after each run of this one, on
# the same log: a before/after in the same run.
body='{"event_id":"probe","event_type":"t","payload":{"user_id":"u-1"}}'
for i in $(seq 1 "$RUNS"); do
  for bin in "$WEIR" ${BASELINE:+"$BASELINE"}; do
    tag=$i; [ "$bin" = "$WEIR" ] || tag="$i-baseline"
    kill -9 "$PID"; wait "$PID" 2>/dev/null || true
    start=$(date +%s.%N)
    "$bin" run --config "$SCRATCH/weir.toml" 2> "$OUT/recovery-$tag.log" & PID=$!
    until [ "$(curl -s -o /dev/null -w '%{http_code}' -d "$body" localhost:8093/v1/topics/clickstream/events)" = 202 ]; do
      sleep 0.005
    done
    end=$(date +%s.%N)
    echo "run $tag: first 202 after $(python3 -c "print(f'{$end - $start:.3f}')") s; $(grep -o 'scanned_bytes=[0-9]*' "$OUT/recovery-$tag.log") $(grep -o 'dedup_ids=[0-9]*' "$OUT/recovery-$tag.log") $(grep -o 'seconds=[0-9.]*' "$OUT/recovery-$tag.log")"
  done
done
kill "$PID"; wait "$PID" 2>/dev/null || true

# Idle RSS on the example config.
cd "$SCRATCH" && rm -rf data
"$WEIR" run --config "$OLDPWD/config.example.toml" --data-dir "$SCRATCH/example-data" --listen 127.0.0.1:8094 2>/dev/null & PID=$!
until curl -sf localhost:8094/readyz >/dev/null; do sleep 0.1; done
sleep 2
echo "idle RSS on config.example.toml: $(awk '/VmRSS/ {print $2, $3}' /proc/$PID/status)"
kill "$PID"; wait "$PID" 2>/dev/null || true
rm -rf "$SCRATCH"
