#!/usr/bin/env bash
# benches/cpu_per_event.sh: what an event costs weir in CPU time, by thread, at a fixed
# offered load of single-event requests (weir-loadgen --rate), with and without the seed's
# `page_views` pipeline. Throughput on this shared 2-core machine swings by 10-20% from
# run to run; CPU time per event at a load both builds carry does not, so it shows what a
# change costs or saves where req/s cannot (a pipeline thread is ~5% of the machine).
#   RUNS=3 RATE=40000 BASELINE=<another weir binary> benches/cpu_per_event.sh
#   EVENTS=1000 RATE=600 benches/cpu_per_event.sh    NDJSON requests of EVENTS events
# Each run: weir (fsync interval, 4 partitions) takes RATE requests/s for 9 s; the CPU of
# each of its threads (/proc/<pid>/task/*/stat) is read over the 6 s in the middle. With
# BASELINE, that build runs the same cases right after this one, run by run.
# Prints per case the median µs per event: total and per thread kind.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; RATE=${RATE:-40000}; EVENTS=${EVENTS:-1}; BASELINE=${BASELINE:-}
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/weir; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench-cpu; mkdir -p "$SCRATCH"
LOCK=/tmp/bench.lock
cargo build --profile bench --bins -q
WEIR=$PWD/target/release/weir; LOADGEN=$PWD/target/release/weir-loadgen
TICK=$(getconf CLK_TCK)

. benches/ingest_config.sh
ingest_config "$SCRATCH/plain.toml" "$SCRATCH/data" interval 0
ingest_config "$SCRATCH/pipeline.toml" "$SCRATCH/data" interval 1

# CPU ticks per thread kind (the name without a trailing -<n> or -<pipeline>).
snapshot() {
  for t in /proc/"$1"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    read -r -a f < <(sed 's/.*) //' "$t/stat" 2>/dev/null) || continue
    case $name in weir-pipe-*) name=pipeline;; weir-read-*) name=read-ahead;; weir-ckpt-*) name=checkpoint;;
      tokio-rt-worker) name=workers;; weir-fsync-*) name=fsync;; *) name=other;; esac
    echo "$name $(( f[11] + f[12] ))"
  done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort
}

SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
trap stop_server EXIT

run_case() { # label binary config run
  local label=$1 bin=$2 conf=$3 i=$4
  stop_server; rm -rf "$SCRATCH/data"
  "$bin" run --config "$SCRATCH/$conf.toml" 2> "$OUT/cpu-weir.log" & SPID=$!
  for _ in $(seq 100); do curl -sf localhost:8091/readyz >/dev/null && break; sleep 0.1; done
  "$LOADGEN" --addr 127.0.0.1:8091 --connections 64 --events "$EVENTS" --duration 8 --warmup 1 \
    --rate "$RATE" --live-time --id-prefix "C$i" > "$OUT/cpu-load.json" 2>/dev/null & local lg=$!
  sleep 2.5
  snapshot "$SPID" > "$SCRATCH/s0"; local t0; t0=$(date +%s.%N)
  sleep 6
  snapshot "$SPID" > "$SCRATCH/s1"; local t1; t1=$(date +%s.%N)
  wait "$lg"
  stop_server
  # Events per second over the measured part: the rate the loadgen reports (it holds
  # the offered rate unless weir falls behind, then it is what weir carried).
  local eps; eps=$(python3 -c "import json; print(json.load(open('$OUT/cpu-load.json'))['eps'])")
  join "$SCRATCH/s0" "$SCRATCH/s1" | awk -v tick="$TICK" -v t0="$t0" -v t1="$t1" -v eps="$eps" \
    -v label="$label" -v run="$i" '{ us = ($3 - $2) / tick * 1e6 / (eps * (t1 - t0)); total += us;
      parts = parts sprintf(" %s=%.3f", $1, us) }
      END { printf "%s run=%s eps=%d total=%.3f%s\n", label, run, eps, total, parts }' \
    | tee -a "$OUT/cpu_per_event.txt"
}

: > "$OUT/cpu_per_event.txt"
for i in $(seq "$RUNS"); do
  exec 9>"$LOCK"; flock 9
  run_case plain "$WEIR" plain "$i"
  run_case pipeline "$WEIR" pipeline "$i"
  if [ -n "$BASELINE" ]; then
    run_case baseline_plain "$BASELINE" plain "$i"
    run_case baseline_pipeline "$BASELINE" pipeline "$i"
  fi
  flock -u 9
done

python3 - "$OUT/cpu_per_event.txt" "$RATE" "$EVENTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    d = dict(kv.split("=") for kv in f[1:])
    rows.setdefault(f[0], []).append(d)
print(f"CPU µs per event at {sys.argv[2]} requests/s of {sys.argv[3]} event(s) (median of {len(next(iter(rows.values())))} runs)")
med = {}
for label, runs in rows.items():
    keys = sorted({k for r in runs for k in r} - {"run", "eps"})
    m = {k: statistics.median(float(r.get(k, 0)) for r in runs) for k in keys}
    med[label] = m
    print(f"  {label:18} " + " ".join(f"{k}={m[k]:.3f}" for k in ["total"] + [k for k in keys if k != "total"]))
for pre in ["", "baseline_"]:
    p, q = med.get(pre + "pipeline"), med.get(pre + "plain")
    if p and q:
        print(f"  {pre or 'this build '}pipeline adds {p['total'] - q['total']:+.3f} µs/event "
              f"({(p['total'] / q['total'] - 1) * 100:+.1f}%); its thread {p.get('pipeline', 0):.3f}")
if "baseline_pipeline" in med:
    a, b = med["pipeline"].get("pipeline", 0), med["baseline_pipeline"].get("pipeline", 0)
    if b:
        print(f"  pipeline thread, this build / baseline: {a / b:.2f}")
PY
