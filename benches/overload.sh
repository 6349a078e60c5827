#!/usr/bin/env bash
# benches/overload.sh: weir offered five times its [server] bounds, open loop, ingest and
# queries together (issue 7, point 5; docs/reliability.md, "Overload").
#   DURATION=60 benches/overload.sh        the measurement (the default)
#   DURATION=15 benches/overload.sh        a short check that it runs
# weir runs a release build with max_connections = 64, max_inflight = 4 MiB and
# memory_max = 512 MiB on a scratch data dir, a topic with fsync = "always" and a
# pipeline to query. weir-loadgen sends, open loop, half ingest (one event padded so
# that the ingest requests of the overload ask for 5x max_inflight at once) and half
# GET /v1/pipelines/page_views/keys/page-0:
#   unloaded    UNLOADED_CONNS (16) connections at UNLOADED_RATE (200) req/s in all;
#   overloaded  5 x max_connections (320) connections at 5 x UNLOADED_RATE req/s;
# DURATION seconds each, weir's VmRSS sampled every second. Then: every 202'd event is
# read back from the log at the offset its answer named. Prints a summary table: answers
# by status, 503s without Retry-After, refusals by reason (weir_http_refused_total),
# accepted p50/p99 and the ratio overloaded / unloaded (target < 2), max RSS and VmHWM
# against memory_max, and the loss check. Exits 1 if a promise failed. Raw outputs in
# $RESULTS_DIR/overload (default /tmp/weir-bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}; WARMUP=${WARMUP:-3}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-64}; MAX_INFLIGHT_MIB=${MAX_INFLIGHT_MIB:-4}
MEMORY_MAX_MIB=${MEMORY_MAX_MIB:-512}
UNLOADED_CONNS=${UNLOADED_CONNS:-16}; UNLOADED_RATE=${UNLOADED_RATE:-200}
OVERLOAD_CONNS=$((5 * MAX_CONNECTIONS)); OVERLOAD_RATE=${OVERLOAD_RATE:-$((5 * UNLOADED_RATE))}
QUERY_SHARE=0.5
# Ingest bodies: the overload's ingest connections (half of them at a time, on average)
# ask for 5 x max_inflight: 5 x 4 MiB / 160 = 128 KiB each, less the envelope.
BODY=$((5 * MAX_INFLIGHT_MIB * 1024 * 1024 * 2 / OVERLOAD_CONNS))
PAD=$((BODY - 300))
OUT=${RESULTS_DIR:-/tmp/weir-bench-results}/overload; mkdir -p "$OUT"
SCRATCH=${SCRATCH_DIR:-/var/tmp}/weir-bench-overload; mkdir -p "$SCRATCH"
ADDR=127.0.0.1:8098
command -v python3 >/dev/null || apt-get install -y python3 >/dev/null

cargo build --release --bin weir --bin weir-loadgen -q
WEIR=target/release/weir; LOADGEN=target/release/weir-loadgen
# 320 client sockets and as many server ones: raise the soft limits to the hard ones.
ulimit -Sn "$(ulimit -Hn)"

WPID=""; SPID=""
cleanup() {
  for p in $SPID $WPID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

rm -rf "$SCRATCH/data"
cat > "$SCRATCH/weir.toml" <<TOML
[server]
listen = "$ADDR"
max_connections = $MAX_CONNECTIONS
max_inflight = "${MAX_INFLIGHT_MIB}MiB"
max_body = "1MiB"
memory_max = "${MEMORY_MAX_MIB}MiB"
[storage]
data_dir = "$SCRATCH/data"
[[topic]]
name = "clickstream"
partitions = 4
fsync = "always"
key_field = "/payload/user_id"
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
"$WEIR" run --config "$SCRATCH/weir.toml" 2> "$OUT/weir.log" & WPID=$!
for _ in $(seq 100); do curl -sf "$ADDR/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$ADDR/readyz" >/dev/null || { echo "weir did not start:"; cat "$OUT/weir.log"; exit 1; }

# VmRSS every second for the whole run: "seconds-since-start phase kB".
PHASE_FILE=$SCRATCH/phase; echo start > "$PHASE_FILE"
( t0=$(date +%s); while kill -0 "$WPID" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$WPID/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo "$(( $(date +%s) - t0 )) $(cat "$PHASE_FILE") $rss"
    sleep 1
  done ) > "$OUT/rss.txt" & SPID=$!

refused() { curl -s "$ADDR/metrics" | grep '^weir_http_refused_total' || true; }
run() { # tag connections rate
  echo "$1" > "$PHASE_FILE"
  refused > "$OUT/$1.refused_before.txt"
  "$LOADGEN" --addr "$ADDR" --path /v1/topics/clickstream/events --connections "$2" \
    --rate "$3" --duration "$DURATION" --warmup "$WARMUP" --live-time --pad "$PAD" \
    --query-path /v1/pipelines/page_views/keys/page-0 --query-share "$QUERY_SHARE" \
    --id-prefix "$1" --acked-out "$OUT/$1.acked.txt" > "$OUT/$1.json" 2> "$OUT/$1.txt"
  cat "$OUT/$1.txt"
  # The overload's refused connections linger up to 2 s after it: let them go.
  sleep 3
  refused > "$OUT/$1.refused_after.txt"
  awk '/^VmHWM/ {print $2}' "/proc/$WPID/status" > "$OUT/$1.hwm.txt"
}
echo "bodies of $BODY bytes; unloaded: $UNLOADED_CONNS connections at $UNLOADED_RATE req/s;" \
  "overloaded: $OVERLOAD_CONNS connections at $OVERLOAD_RATE req/s; ${DURATION} s each"
run U "$UNLOADED_CONNS" "$UNLOADED_RATE"
run O "$OVERLOAD_CONNS" "$OVERLOAD_RATE"
echo done > "$PHASE_FILE"

python3 - "$OUT" "$ADDR" "$MEMORY_MAX_MIB" "$MAX_CONNECTIONS" "$MAX_INFLIGHT_MIB" <<'PY'
import http.client, json, sys
out, addr, memory_max_mib, max_conns, max_inflight_mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
res = {t: json.load(open(f"{out}/{t}.json")) for t in "UO"}
def reasons(t):
    def read(name):
        d = {}
        for line in open(f"{out}/{t}.refused_{name}.txt"):
            k, v = line.rsplit(" ", 1)
            d[k.split('reason="')[1].split('"')[0]] = float(v)
        return d
    b, a = read("before"), read("after")
    return {k: int(a[k] - b.get(k, 0)) for k in a if a[k] - b.get(k, 0) > 0}
rss = [l.split() for l in open(f"{out}/rss.txt")]
rss_max = {t: max([int(r[2]) for r in rss if r[1] == t] or [0]) for t in "UO"}
hwm = {t: int(open(f"{out}/{t}.hwm.txt").read().strip() or 0) for t in "UO"}

# The loss check: every 202'd event read back at the offset its answer named.
host, port = addr.split(":")
conn = http.client.HTTPConnection(host, int(port), timeout=60)
log = {}
cursor = "earliest"
while True:
    conn.request("GET", f"/v1/topics/clickstream/events?cursor={cursor}&limit=10000")
    r = conn.getresponse(); body = r.read()
    if r.status != 200:
        sys.exit(f"read back failed: {r.status} {body[:200]!r}")
    j = json.loads(body)
    for e in j["events"]:
        log.setdefault(e["event"]["event_id"], []).append((e["partition"], e["offset"]))
    if not j["events"]:
        break
    cursor = j["next_cursor"]
twice = sum(1 for v in log.values() if len(v) > 1)
acked = missing = misplaced = 0
for t in "UO":
    for line in open(f"{out}/{t}.acked.txt"):
        if not line.strip():
            continue
        prefix, answer = line.rstrip("\n").split("\t", 1)
        at = json.loads(answer)["offsets"][0]
        acked += 1
        found = log.get(f"{prefix}-00000")
        if not found:
            missing += 1
        elif found[0] != (at["partition"], at["first"]):
            misplaced += 1

u, o = res["U"], res["O"]
ratio = o["accepted_p99_us"] / max(u["accepted_p99_us"], 1)
refusals_503 = o["statuses"].get("503", 0) + u["statuses"].get("503", 0)
no_retry = o["no_retry_after"] + u["no_retry_after"]
other = {k: v for t in "UO" for k, v in res[t]["statuses"].items() if k not in ("200", "202", "503")}
bound = memory_max_mib * 1024
rows = [
    ("answers by status", json.dumps(u["statuses"]), json.dumps(o["statuses"])),
    ("no answer (errors)", u["errors"], o["errors"]),
    ("503 without Retry-After", u["no_retry_after"], o["no_retry_after"]),
    ("refusals by reason (metric)", json.dumps(reasons("U")), json.dumps(reasons("O"))),
    ("accepted req/s", round(u["rps"]), round(o["rps"])),
    ("accepted p50 / p99 (ms)", f'{u["accepted_p50_us"]/1e3:.1f} / {u["accepted_p99_us"]/1e3:.1f}',
     f'{o["accepted_p50_us"]/1e3:.1f} / {o["accepted_p99_us"]/1e3:.1f}'),
    ("sends >10 ms behind schedule", u["late"], o["late"]),
    ("max VmRSS (MiB)", f"{rss_max['U']/1024:.0f}", f"{rss_max['O']/1024:.0f}"),
    ("VmHWM at the end (MiB)", f"{hwm['U']/1024:.0f}", f"{hwm['O']/1024:.0f}"),
]
print(f"\n| | unloaded | overloaded |\n|---|---|---|")
for name, a, b in rows:
    print(f"| {name} | {a} | {b} |")
ok_rss = max(hwm.values()) <= bound
ok_retry = no_retry == 0 and not other
ok_ratio = ratio < 2
ok_loss = missing == 0 and misplaced == 0 and twice == 0
print(f"""
RSS: VmHWM {max(hwm.values())/1024:.0f} MiB against server.memory_max {memory_max_mib} MiB: {'ok' if ok_rss else 'OVER'}
  (what bounds it: request bodies held <= max_inflight ({max_inflight_mib} MiB); {max_conns} connections, each a
  hyper read buffer of at most 128 KiB and one answer; sled_cache 8 MiB; the dedup table, the
  pipeline's windows and hot view, and the runtime's baseline; refused connections hold a socket
  and no buffer)
refusals: {refusals_503} answers 503, {no_retry} without Retry-After, other statuses {other or 'none'}: {'ok' if ok_retry else 'FAILED'}
accepted p99 overloaded / unloaded: {ratio:.2f} (target < 2): {'ok' if ok_ratio else 'OVER'}
loss check: {acked} acknowledged events, {missing} missing, {misplaced} at another offset, {twice} ids twice in the log: {'ok' if ok_loss else 'FAILED'}""")
sys.exit(0 if ok_rss and ok_retry and ok_loss else 1)
PY
