#!/usr/bin/env bash
# benches/pipeline.sh: one pipeline thread rebuilding the seed's Flink job from the log.
#   RUNS=3 N=2000000 benches/pipeline.sh
# Writes N events with ../shared/bench/flink/gen_events.py (the file PyFlink reads in
# ../shared/bench/flink/run.sh), ingests them into `clickstream` with no pipeline
# configured, then restarts weir with the seed's `page_views` pipeline (tumbling 1-minute
# count per page, 5 s out of orderness, 1 m lateness) and times how long the pipeline
# takes to reach the end of the log: events/s on one pipeline thread, log reads
# included. Each run deletes the result store first, so it rebuilds from offset 0.
# Prints medians; raw outputs in $RESULTS_DIR/pipeline (default /tmp/weir-bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; N=${N:-2000000}
SHARED=${SHARED:-$(cd .. && pwd)/shared/bench}
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/pipeline; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench-pipeline; mkdir -p "$SCRATCH"
LOCK=/tmp/bench.lock
ADDR=127.0.0.1:8094

cargo build --profile bench --bins -q
WEIR=target/release/weir

SPID=""
stop_server() { if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi; SPID=""; }
cleanup() { stop_server; rm -rf "$SCRATCH"; }
trap cleanup EXIT

EVENTS="$SCRATCH/events.jsonl"
python3 "$SHARED/flink/gen_events.py" "$N" "$EVENTS"

TOPIC=$(cat <<TOML
[server]
listen = "$ADDR"
[storage]
data_dir = "$SCRATCH/data"
[[topic]]
name = "clickstream"
partitions = 4
fsync = "interval"
key_field = "/payload/user_id"
# gen_events.py writes a fixed day; keep it in bounds whenever this runs.
max_event_age = "36500d"
max_event_lead = "36500d"
TOML
)
PIPELINE=$(cat <<'TOML'
[[pipeline]]
name = "page_views"
source = "clickstream"
filter = ["page.click"]
group_by = ["/payload/page_id"]
window = { kind = "tumbling", size = "1m" }
time = "event"
max_out_of_orderness = "5s"
allowed_lateness = "1m"
[[pipeline.aggregate]]
name = "count"
fn = "count"
TOML
)
echo "$TOPIC" > "$SCRATCH/ingest.toml"
printf '%s\n%s\n' "$TOPIC" "$PIPELINE" > "$SCRATCH/pipeline.toml"

start() { # config
  stop_server
  "$WEIR" run --config "$1" 2>> "$OUT/weir.log" & SPID=$!
  for _ in $(seq 200); do curl -s "$ADDR/healthz" >/dev/null && return; sleep 0.05; done
  echo "weir did not start"; tail "$OUT/weir.log"; exit 1
}

# Ingest the file as NDJSON requests of 1,000 lines over one keep-alive connection.
start "$SCRATCH/ingest.toml"
python3 - "$ADDR" "$EVENTS" <<'PY'
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
echo "ingested $N events ($(du -sh "$SCRATCH/data" | cut -f1) on disk)"

for i in $(seq 1 "$RUNS"); do
  rm -rf "$SCRATCH/data/store"
  sync
  flock "$LOCK" python3 - "$WEIR" "$SCRATCH/pipeline.toml" "$ADDR" "$N" "$OUT/run.$i.json" "$OUT/weir.log" <<'PY'
import json, subprocess, sys, time, urllib.request
weir, config, addr, n, out, log = sys.argv[1:]
t0 = time.monotonic()
p = subprocess.Popen([weir, "run", "--config", config], stderr=open(log, "a"))
try:
    lag = None
    while time.monotonic() - t0 < 600:
        try:
            body = json.load(urllib.request.urlopen(f"http://{addr}/v1/pipelines", timeout=1))
            lag = body["pipelines"][0]["lag"]
            if lag == 0:
                break
        except OSError:
            pass
        time.sleep(0.02)
    secs = time.monotonic() - t0
    if lag != 0:
        sys.exit(f"the pipeline did not catch up: lag {lag}")
    top = json.load(urllib.request.urlopen(f"http://{addr}/v1/pipelines/page_views/top?n=1&window=last_closed"))
    json.dump({"events": int(n), "seconds": secs, "eps": int(n) / secs, "top": top}, open(out, "w"))
finally:
    p.terminate(); p.wait()
PY
done
python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/run.[0-9]*.json"))]
eps = [r["eps"] for r in runs]
print(f"pipeline rebuild eps median {statistics.median(eps):.0f} runs {[round(x) for x in eps]} "
      f"(seconds {[round(r['seconds'], 2) for r in runs]}, process start included)")
PY
