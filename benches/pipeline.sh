#!/usr/bin/env bash
# benches/pipeline.sh: one pipeline thread rebuilding the seed's Flink job from the log.
#   RUNS=3 N1=8000000 N2=24000000 benches/pipeline.sh   # the defaults: issue #4's method
#   FLINK=1 benches/pipeline.sh     # also the PyFlink job at parallelism 1, same files
#   AGG=count_distinct benches/pipeline.sh  # distinct users per page per minute instead
#   WINDOW=session benches/pipeline.sh  # session windows (gap 30 s) keyed by user instead
# Writes N1 and N2 events with ../shared/bench/flink/gen_events.py (the files PyFlink
# reads in ../shared/bench/flink/run.sh), ingests each into `clickstream` of its own data
# dir with no pipeline configured, then, per run, deletes the result store and starts
# weir with the seed's `page_views` pipeline (tumbling 1-minute count per page, 5 s out
# of orderness, 1 m lateness; AGG=count_distinct: count_distinct of /payload/user_id
# instead), which rebuilds from offset 0 (its log in the page cache). The run ends when
# weir logs "pipeline caught up with its source" (the pipeline thread's first lag 0,
# read from its stderr as it is written: no polling).
#
# Figures, medians over RUNS (runs of N1 and N2 interleaved):
#   wall:   process start -> caught up (start-up, recovery and store open included);
#   thread: the pipeline thread's own start -> caught up, as weir logs it (log reads,
#           CRC checks, engine, hot view and checkpoints included);
#   marginal (N2-N1)/(t2-t1) of either: what PyFlink's run.sh reports, start-up cancelled.
# Raw outputs in $RESULTS_DIR/pipeline (default /tmp/weir-bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
# Issue #4 names PyFlink's 8M -> 24M marginal rate (../shared/bench/flink/run.sh's
# steady-state sizes): ~1.4 + 4.3 GB of events and ~2 + 6 GB of log under $SCRATCH.
RUNS=${RUNS:-3}; N1=${N1:-8000000}; N2=${N2:-24000000}; AGG=${AGG:-count}; WINDOW=${WINDOW:-tumbling}
case "$AGG" in count|count_distinct) ;; *) echo "AGG is count or count_distinct"; exit 2;; esac
# ../shared/bench from the main checkout, ../../shared/bench from a worktree under wt/.
if [ -z "${SHARED:-}" ]; then
  for SHARED in "$(cd .. && pwd)/shared/bench" "$(cd ../.. && pwd)/shared/bench"; do
    [ -d "$SHARED" ] && break
  done
fi
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/pipeline; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench-pipeline; mkdir -p "$SCRATCH"
# The event files; kept when given (PyFlink's run.sh reads the same names under $DATA).
EVENTS_DIR=${EVENTS_DIR:-$SCRATCH/events}; mkdir -p "$EVENTS_DIR"
LOCK=/tmp/bench.lock
ADDR=${ADDR:-127.0.0.1:8094}

cargo build --profile bench --bins -q
WEIR=target/release/weir

SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
cleanup() { stop_server; rm -rf "$SCRATCH"; }
trap cleanup EXIT

config() { # data_dir with_pipeline
  cat <<TOML
[server]
listen = "$ADDR"
[storage]
data_dir = "$1"
[log]
format = "json"
[[topic]]
name = "clickstream"
partitions = 4
fsync = "interval"
key_field = "/payload/user_id"
# gen_events.py writes a fixed day; keep it in bounds whenever this runs.
max_event_age = "36500d"
max_event_lead = "36500d"
TOML
  if [ "$2" = yes ] && [ "$WINDOW" = session ]; then cat <<'TOML'
[[pipeline]]
name = "user_sessions"
source = "clickstream"
filter = ["page.click"]
group_by = ["/payload/user_id"]
window = { kind = "session", gap = "30s", max_length = "1d" }
time = "event"
max_out_of_orderness = "5s"
allowed_lateness = "1m"
[[pipeline.aggregate]]
name = "count"
fn = "count"
TOML
  return 0; fi
  [ "$2" = yes ] && cat <<'TOML'
[[pipeline]]
name = "page_views"
source = "clickstream"
filter = ["page.click"]
group_by = ["/payload/page_id"]
window = { kind = "tumbling", size = "1m" }
time = "event"
max_out_of_orderness = "5s"
allowed_lateness = "1m"
TOML
  [ "$2" = yes ] && if [ "$AGG" = count_distinct ]; then cat <<'TOML'
[[pipeline.aggregate]]
name = "users"
fn = "count_distinct"
field = "/payload/user_id"
TOML
  else cat <<'TOML'
[[pipeline.aggregate]]
name = "count"
fn = "count"
TOML
  fi
  return 0
}

start() { # config
  stop_server
  "$WEIR" run --config "$1" 2>> "$OUT/weir.log" & SPID=$!
  for _ in $(seq 200); do curl -s "$ADDR/healthz" >/dev/null && return; sleep 0.05; done
  echo "weir did not start"; tail "$OUT/weir.log"; exit 1
}

# Ingest each file as NDJSON requests of 1,000 lines over one keep-alive connection.
for n in "$N1" "$N2"; do
  events="$EVENTS_DIR/events_$n.jsonl"
  [ -s "$events" ] || python3 "$SHARED/flink/gen_events.py" "$n" "$events"
  config "$SCRATCH/data-$n" no > "$SCRATCH/ingest-$n.toml"
  config "$SCRATCH/data-$n" yes > "$SCRATCH/pipeline-$n.toml"
  # The ingest takes both cores for a minute or more: under the lock, so it does not
  # disturb another benchmark's timed run (the runs below take it too).
  exec 9> "$LOCK"
  flock 9
  start "$SCRATCH/ingest-$n.toml"
  python3 - "$ADDR" "$events" <<'PY'
import http.client, sys
host, port = sys.argv[1].split(":")
conn = http.client.HTTPConnection(host, int(port))
def send(lines):
    conn.request("POST", "/v1/topics/clickstream/events", body="".join(lines),
                 headers={"Content-Type": "application/x-ndjson"})
    r = conn.getresponse(); body = r.read()
    if r.status != 202:
        sys.exit(f"ingest failed: {r.status} {body[:200]!r}")
chunk = []
with open(sys.argv[2]) as f:
    for line in f:
        chunk.append(line)
        if len(chunk) == 1000:
            send(chunk); chunk = []
if chunk:
    send(chunk)
PY
  stop_server
  flock -u 9
  echo "ingested $n events ($(du -sh "$SCRATCH/data-$n" | cut -f1) on disk)"
done
sync
# Every run reads its log from the page cache, as PyFlink's runs read their file: the
# event files' pages (read by the ingest, not needed again) are dropped, and each run's
# log is read back just before it (below).
python3 - "$EVENTS_DIR/events_$N1.jsonl" "$EVENTS_DIR/events_$N2.jsonl" <<'PY'
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
logs_kb=$(du -sk "$SCRATCH/data-$N1" "$SCRATCH/data-$N2" | awk '{s += $1} END {print s}')
avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if [ "$logs_kb" -gt $((avail_kb * 8 / 10)) ]; then
  echo "warning: the logs (${logs_kb} KiB) do not fit the page cache; runs read from the disk"
fi

# The share of a log's bytes in the page cache (fincore, util-linux; "?" without it).
resident() {
  command -v fincore > /dev/null || { echo "?"; return; }
  find "$1" -name '*.log' -exec fincore --bytes --noheadings --raw --output RES,SIZE {} + |
    awk '{r += $1; s += $2} END {printf "%.3f", s ? r / s : 0}'
}

rm -f "$OUT"/run.*.json
for i in $(seq 1 "$RUNS"); do
  for n in "$N1" "$N2"; do
    rm -rf "$SCRATCH/data-$n/store"
    # Pages idle for a while can leave the page cache between runs (memory pressure, or
    # a proactive reclaimer such as DAMON's pageout scheme: this machine's pages out
    # what went unread for 60 s): what was left is recorded, and the log is read back
    # before the timed run.
    before=$(resident "$SCRATCH/data-$n")
    flock "$LOCK" find "$SCRATCH/data-$n" -name '*.log' -exec cat {} + > /dev/null
    flock "$LOCK" python3 - "$WEIR" "$SCRATCH/pipeline-$n.toml" "$ADDR" "$n" "$OUT/run.$n.$i.json" "$OUT/weir.log" "$WINDOW" "$before" <<'PY'
import json, subprocess, sys, time, urllib.request
weir, config, addr, n, out, log, window, resident = sys.argv[1:]
log = open(log, "a")
t0 = time.monotonic()
p = subprocess.Popen([weir, "run", "--config", config], stderr=subprocess.PIPE, text=True)
try:
    caught = None
    for line in p.stderr:
        log.write(line)
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "pipeline caught up with its source":
            wall = time.monotonic() - t0
            caught = fields
            break
    if caught is None:
        sys.exit("weir ended before the pipeline caught up")
    if caught["records"] != int(n):
        sys.exit(f"the pipeline caught up after {caught['records']} records, not {n}")
    body = json.load(urllib.request.urlopen(f"http://{addr}/v1/pipelines"))
    top = None if window == "session" else json.load(urllib.request.urlopen(f"http://{addr}/v1/pipelines/page_views/top?n=1&window=last_closed"))
    p0 = body["pipelines"][0]
    json.dump({"events": int(n), "wall": wall, "thread": caught["seconds"],
               "resident_before": resident, "lag": p0["lag"], "state_bytes": p0["state_bytes"],
               "open_windows": p0["open_windows"], "top": top}, open(out, "w"))
finally:
    p.terminate()
    log.write(p.stderr.read())
    p.wait()
PY
  done
done
python3 - "$OUT" "$N1" "$N2" <<'PY'
import glob, json, statistics, sys
out, n1, n2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def runs(n): return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/run.{n}.*.json"))]
for col, what in (("wall", "process start -> caught up"), ("thread", "pipeline thread -> caught up")):
    t1 = statistics.median(r[col] for r in runs(n1))
    t2 = statistics.median(r[col] for r in runs(n2))
    print(f"{col} ({what}): median t({n1})={t1:.3f}s t({n2})={t2:.3f}s "
          f"runs {[round(r[col], 3) for r in runs(n1)]} {[round(r[col], 3) for r in runs(n2)]}")
    print(f"  whole-run {n1/t1:,.0f} / {n2/t2:,.0f} ev/s  marginal (N2-N1)/(t2-t1) = {(n2-n1)/(t2-t1):,.0f} ev/s")
print(f"log in the page cache before each run's read-back: {[r['resident_before'] for r in runs(n1)]} "
      f"{[r['resident_before'] for r in runs(n2)]}")
for n in (n1, n2):
    r = runs(n)[-1]
    per = r["state_bytes"] // max(r["open_windows"], 1)
    print(f"state at caught-up ({n}): {r['state_bytes']:,} bytes, {r['open_windows']} open windows, "
          f"{per:,} bytes per open window")
PY

if [ -n "${FLINK:-}" ]; then
  # The baseline in the same run: the seed's PyFlink job at parallelism 1 over the same
  # files (its summary prints the marginal rate of the same method).
  PAR=1 SKIP_CHECK=${SKIP_CHECK:-1} RUNS="$RUNS" N1="$N1" N2="$N2" DATA="$EVENTS_DIR" \
    RESULTS="$OUT/flink-p1.tsv" bash "$SHARED/flink/run.sh"
fi
if [ -n "${FLINK:-}" ]; then
  python3 - "$OUT" "$N1" "$N2" <<'PY'
import csv, glob, json, statistics, sys
out, n1, n2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def med(rows): return statistics.median(rows)
w = {n: med(json.load(open(f))["wall"] for f in glob.glob(f"{out}/run.{n}.*.json")) for n in (n1, n2)}
rows = list(csv.DictReader(open(f"{out}/flink-p1.tsv"), delimiter="\t"))
f = {n: med(float(r["wall_s"]) for r in rows if int(r["n"]) == n) for n in (n1, n2)}
weir, flink = (n2 - n1) / (w[n2] - w[n1]), (n2 - n1) / (f[n2] - f[n1])
print(f"marginal wall rate: weir {weir:,.0f} ev/s, PyFlink p1 {flink:,.0f} ev/s, ratio {weir / flink:.1f}x")
PY
fi
