#!/usr/bin/env bash
# benches/query.sh: weir's query routes beside the hyper hello-world GET ceiling, loaded by
# wrk -t2 -c64 in the same run on the same cores.
#   RUNS=3 DUR=10 PAGES=1000 benches/query.sh
#   SEED=1 benches/query.sh     also runs ../shared/bench/seed_query.sh (the seed's FastAPI +
#                               Redis service as written, and its best case) for the ratios
# weir runs the seed's pipeline and routes (config.example.toml, fsync = "interval") on a
# scratch data dir, filled with clicks for PAGES pages over the last few minutes, so each
# page has closed (`last_closed`) windows. Each run measures, one after the other:
#   ceiling  GET /hello of ../shared/bench/http_ceiling (40-byte JSON)
#   route    GET /page/page-7/count  (the seed's path, a [[route]])
#   keys     GET /v1/pipelines/page_views/keys/page-7
# and prints medians over the runs of req/s and p99, and of the per-run ratios to the
# ceiling. Raw wrk outputs in $RESULTS_DIR/query (default /tmp/weir-bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; DUR=${DUR:-10}; PAGES=${PAGES:-1000}
SHARED=${SHARED:-$(cd .. && pwd)/shared/bench}
[ -d "$SHARED" ] || SHARED=/work/shared/bench
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/query; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench-query; mkdir -p "$SCRATCH"
LOCK=/tmp/bench.lock
WEIR_ADDR=127.0.0.1:8096; CEILING_ADDR=127.0.0.1:8097
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null

cargo build --profile bench --bins -q
WEIR=target/release/weir
export CARGO_TARGET_DIR=${PEERS_TARGET:-/tmp/peers-target}
BUILD_SRC=$(mktemp -d); cp -r "$SHARED/http_ceiling" "$BUILD_SRC/"; chmod -R u+w "$BUILD_SRC"
(cd "$BUILD_SRC/http_ceiling" && cargo build --release -q)
rm -rf "$BUILD_SRC"
CEILING=$CARGO_TARGET_DIR/release/http_ceiling
unset CARGO_TARGET_DIR

WPID=""; CPID=""
cleanup() {
  for p in $WPID $CPID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

rm -rf "$SCRATCH/data"
cat > "$SCRATCH/weir.toml" <<TOML
[server]
listen = "$WEIR_ADDR"
[storage]
data_dir = "$SCRATCH/data"
[[topic]]
name = "clickstream"
partitions = 4
fsync = "interval"
key_field = "/payload/user_id"
wrap = true
timestamp_field = "/timestamp"
default_event_type = "page.click"
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
[[route]]
method = "POST"
path = "/click"
topic = "clickstream"
response = "seed"
[[route]]
method = "GET"
path = "/page/{page_id}/count"
pipeline = "page_views"
key = "page_id"
aggregate = "count"
window = "last_closed"
response = "seed"
TOML
"$WEIR" run --config "$SCRATCH/weir.toml" 2> "$OUT/weir.log" & WPID=$!
"$CEILING" "$CEILING_ADDR" 2> "$OUT/ceiling.log" & CPID=$!
for _ in $(seq 100); do curl -sf "$WEIR_ADDR/readyz" >/dev/null && break; sleep 0.1; done
for _ in $(seq 50); do curl -sf "$CEILING_ADDR/hello" >/dev/null && break; sleep 0.1; done

# Clicks for PAGES pages, 20 per page and minute over the last 5 minutes (the seed's bare
# objects, wrapped by the topic), as NDJSON requests of 1,000 lines; then wait until the
# pipeline has read them all and page-7 has a closed window.
python3 - "$WEIR_ADDR" "$PAGES" <<'PY'
import datetime, http.client, json, random, sys, time, urllib.request
addr, pages = sys.argv[1], int(sys.argv[2])
host, port = addr.split(":")
conn = http.client.HTTPConnection(host, int(port))
now = time.time()
rng = random.Random(7)
lines = []
def send():
    conn.request("POST", "/v1/topics/clickstream/events", body="".join(lines),
                 headers={"Content-Type": "application/x-ndjson"})
    r = conn.getresponse(); body = r.read()
    if r.status != 202:
        sys.exit(f"ingest failed: {r.status} {body[:200]!r}")
    lines.clear()
n = 0
for t in range(300, 0, -3):  # every 3 s from 5 minutes ago, one click per page
    ts = now - t
    for p in range(pages):
        stamp = datetime.datetime.fromtimestamp(ts + rng.random(), datetime.timezone.utc)
        lines.append(json.dumps({"user_id": f"u-{rng.randrange(10000)}", "page_id": f"page-{p}",
                                 "timestamp": stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]}) + "\n")
        n += 1
        if len(lines) == 1000:
            send()
if lines:
    send()
deadline = time.time() + 60
while True:
    lag = json.load(urllib.request.urlopen(f"http://{addr}/v1/pipelines"))["pipelines"][0]["lag"]
    count = json.load(urllib.request.urlopen(f"http://{addr}/page/page-7/count"))["count"]
    if lag == 0 and count > 0:
        break
    if time.time() > deadline:
        sys.exit(f"the pipeline did not catch up: lag {lag}, page-7 count {count}")
    time.sleep(0.1)
print(f"ingested {n} clicks for {pages} pages; page-7 last closed count {count}")
PY
curl -s "$WEIR_ADDR/page/page-7/count"; echo
curl -s "$WEIR_ADDR/v1/pipelines/page_views/keys/page-7"; echo
curl -s "$CEILING_ADDR/hello"; echo

declare -A URL=(
  [ceiling]="http://$CEILING_ADDR/hello"
  [route]="http://$WEIR_ADDR/page/page-7/count"
  [keys]="http://$WEIR_ADDR/v1/pipelines/page_views/keys/page-7"
)
TAGS="ceiling route keys"
for tag in $TAGS; do
  flock "$LOCK" wrk -t2 -c64 -d3s "${URL[$tag]}" > /dev/null  # warm-up
done
declare -A PID=([ceiling]=$CPID [route]=$WPID [keys]=$WPID)
for i in $(seq 1 "$RUNS"); do
  for tag in $TAGS; do
    # Server CPU sampled inside the lock, right around the wrk run (as http_ceiling.sh does).
    flock "$LOCK" env T="$SHARED/cputicks.py" P="${PID[$tag]}" bash -c 'b=$("$T" "$P"); wrk "$@";
      a=$("$T" "$P"); echo "server_cpu_ticks=$((a-b)) clk_tck=$(getconf CLK_TCK)"' \
      _ -t2 -c64 -d"${DUR}s" --latency "${URL[$tag]}" > "$OUT/$tag.$i.txt"
  done
done
curl -s "$WEIR_ADDR/metrics" | grep -E '^weir_http_request_duration_seconds_count' > "$OUT/weir_metrics.txt" || true
for tag in $TAGS; do echo "== $tag"; "$SHARED/wrkparse.py" "$OUT"/$tag.[0-9]*.txt | tail -1; done

SEED_OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/seed_query
if [ "${SEED:-0}" = 1 ]; then
  # The seed's service stores its counts in Redis: seed_query.sh starts a redis-server.
  command -v redis-server >/dev/null || apt-get install -y redis-server >/dev/null
  RUNS=$RUNS DUR=${DUR}s "$SHARED/seed_query.sh" query query_best_std
fi

python3 - "$OUT" "$RUNS" "$SEED_OUT" <<'PY'
import glob, os, re, statistics as st, sys
out, runs, seed_out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6}
def parse(path):
    t = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    non2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    if non2:
        sys.exit(f"{path}: {non2.group(1)} non-2xx answers")
    n = int(re.search(r"(\d+) requests in", t).group(1))
    cpu = re.search(r"server_cpu_ticks=(\d+) clk_tck=(\d+)", t)
    cpu_us = int(cpu.group(1)) / int(cpu.group(2)) * 1e6 / n if cpu else float("nan")
    return rps, float(m.group(1)) * UNIT[m.group(2)], cpu_us
res = {tag: [parse(f"{out}/{tag}.{i}.txt") for i in range(1, runs + 1)] for tag in ("ceiling", "route", "keys")}
med = lambda xs: st.median(xs)
for tag in ("route", "keys"):
    rps_ratio = [w[0] / c[0] for w, c in zip(res[tag], res["ceiling"])]
    p99_ratio = [w[1] / c[1] for w, c in zip(res[tag], res["ceiling"])]
    print(f"{tag}: req/s median {med([r[0] for r in res[tag]]):.0f} p99 median {med([r[1] for r in res[tag]]):.0f} us; "
          f"ceiling in the same runs {med([r[0] for r in res['ceiling']]):.0f} req/s p99 {med([r[1] for r in res['ceiling']]):.0f} us; "
          f"req/s ratio median {med(rps_ratio):.2f} {[round(x, 2) for x in rps_ratio]}, "
          f"p99 ratio median {med(p99_ratio):.2f} {[round(x, 2) for x in p99_ratio]}")
    print(f"  server CPU per request: {tag} {med([r[2] for r in res[tag]]):.2f} us, "
          f"ceiling {med([r[2] for r in res['ceiling']]):.2f} us")
seed = {}
for name in ("query_keys_w2", "query_get_std_w2"):
    files = sorted(glob.glob(f"{seed_out}/{name}.[0-9]*.txt"))
    if files and os.path.getmtime(files[0]) > os.path.getmtime(f"{out}/ceiling.1.txt"):
        seed[name] = med([parse(f)[0] for f in files])
if seed:
    route = med([r[0] for r in res["route"]])
    for name, rps in seed.items():
        print(f"route vs seed {name}: {rps:.0f} req/s, ratio {route / rps:.0f}x")
PY
