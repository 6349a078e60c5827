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
# DURATION seconds each in all, interleaved in ROUNDS (4) rounds of unloaded then
# overloaded (U1 O1 U2 O2 ...), so that the shared disk's slow spells (fsync = "always":
# an ingest's latency is mostly its fdatasync) fall on both alike; percentiles pool the
# rounds. weir's VmRSS sampled every second. Then: every 202'd event is read back from
# the log at the offset its answer named. Prints a summary table: answers by status,
# 503s without Retry-After, refusals by reason (weir_http_refused_total), accepted
# p50/p99 in all and by kind (ingest, query; on a kept-alive connection or one opened for
# it) and the ratio overloaded / unloaded (target < 2), max RSS and VmHWM against
# memory_max, and the loss check. Exits 1 if a promise failed. Raw outputs in
# $RESULTS_DIR/overload (default /tmp/weir-bench-results).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}; WARMUP=${WARMUP:-3}; ROUNDS=${ROUNDS:-4}
ROUND_SECONDS=$(( (DURATION + ROUNDS - 1) / ROUNDS ))
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
run() { # tag (U1, O1, ...) connections rate
  echo "${1:0:1}" > "$PHASE_FILE"
  refused > "$OUT/$1.refused_before.txt"
  "$LOADGEN" --addr "$ADDR" --path /v1/topics/clickstream/events --connections "$2" \
    --rate "$3" --duration "$ROUND_SECONDS" --warmup "$WARMUP" --live-time --pad "$PAD" \
    --query-path /v1/pipelines/page_views/keys/page-0 --query-share "$QUERY_SHARE" \
    --id-prefix "$1" --acked-out "$OUT/$1.acked.txt" --latencies-out "$OUT/$1.latencies.txt" \
    > "$OUT/$1.json" 2> "$OUT/$1.txt"
  cat "$OUT/$1.txt"
  # The overload's refused connections linger up to 2 s after it: let them go.
  sleep 3
  refused > "$OUT/$1.refused_after.txt"
  awk '/^VmHWM/ {print $2}' "/proc/$WPID/status" > "$OUT/$1.hwm.txt"
}
echo "bodies of $BODY bytes; unloaded: $UNLOADED_CONNS connections at $UNLOADED_RATE req/s;" \
  "overloaded: $OVERLOAD_CONNS connections at $OVERLOAD_RATE req/s;" \
  "${DURATION} s each in $ROUNDS interleaved rounds of $ROUND_SECONDS s"
rm -f "$OUT"/[UO]*.*
for round in $(seq "$ROUNDS"); do
  run "U$round" "$UNLOADED_CONNS" "$UNLOADED_RATE"
  run "O$round" "$OVERLOAD_CONNS" "$OVERLOAD_RATE"
done
echo done > "$PHASE_FILE"

python3 - "$OUT" "$ADDR" "$MEMORY_MAX_MIB" "$MAX_CONNECTIONS" "$MAX_INFLIGHT_MIB" "$ROUNDS" "$ROUND_SECONDS" <<'PY'
import http.client, json, sys
out, addr, memory_max_mib, max_conns, max_inflight_mib, rounds, round_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
tags = {t: [f"{t}{r}" for r in range(1, rounds + 1)] for t in "UO"}
def pct(lat, q):
    return lat[round((len(lat) - 1) * q)] if lat else 0
def pooled(t):
    runs = [json.load(open(f"{out}/{tag}.json")) for tag in tags[t]]
    statuses = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    kinds = {}
    for tag in tags[t]:
        for line in open(f"{out}/{tag}.latencies.txt"):
            kind, us = line.split()
            kinds.setdefault(kind, []).append(int(us))
    accepted = sorted(us for lat in kinds.values() for us in lat)
    by = {}
    for kind in ("ingest", "query"):
        lat = sorted(us for k, l in kinds.items() if k.startswith(kind) for us in l)
        by[kind] = (len(lat), pct(lat, 0.5), pct(lat, 0.99))
    opened = sum(len(l) for k, l in kinds.items() if k.endswith("opened"))
    return {
        "statuses": statuses,
        "errors": sum(r["errors"] for r in runs),
        "no_retry_after": sum(r["no_retry_after"] for r in runs),
        "late": sum(r["late"] for r in runs),
        "rps": sum(r["rps"] for r in runs) / len(runs),
        "accepted_p50_us": pct(accepted, 0.5),
        "accepted_p99_us": pct(accepted, 0.99),
        "by": by,
        "opened": opened,
        "round_p99_us": [r["accepted_p99_us"] for r in runs],
    }
res = {t: pooled(t) for t in "UO"}
def reasons(t):
    def read(tag, name):
        d = {}
        for line in open(f"{out}/{tag}.refused_{name}.txt"):
            k, v = line.rsplit(" ", 1)
            d[k.split('reason="')[1].split('"')[0]] = float(v)
        return d
    total = {}
    for tag in tags[t]:
        b, a = read(tag, "before"), read(tag, "after")
        for k in a:
            total[k] = total.get(k, 0) + int(a[k] - b.get(k, 0))
    return {k: v for k, v in total.items() if v > 0}
rss = [l.split() for l in open(f"{out}/rss.txt")]
rss_max = {t: max([int(r[2]) for r in rss if r[1] == t] or [0]) for t in "UO"}
# VmHWM only grows: the unloaded figure is the first round's, before any overload.
hwm_of = lambda tag: int(open(f"{out}/{tag}.hwm.txt").read().strip() or 0)
hwm = {"U": hwm_of("U1"), "O": max(hwm_of(tag) for tag in tags["O"])}

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
for tag in tags["U"] + tags["O"]:
    for line in open(f"{out}/{tag}.acked.txt"):
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
    *[(f"{kind}: n, p50 / p99 (ms)", *(f'{x["by"][kind][0]}, {x["by"][kind][1]/1e3:.1f} / {x["by"][kind][2]/1e3:.1f}' for x in (u, o)))
      for kind in ("ingest", "query")],
    ("accepted on a connection opened for it", u["opened"], o["opened"]),
    ("accepted p99 by round (ms)", *(" ".join(f"{p/1e3:.1f}" for p in x["round_p99_us"]) for x in (u, o))),
    ("sends >10 ms behind schedule", u["late"], o["late"]),
    ("max VmRSS (MiB)", f"{rss_max['U']/1024:.0f}", f"{rss_max['O']/1024:.0f}"),
    ("VmHWM (MiB; unloaded: after its first round)", f"{hwm['U']/1024:.0f}", f"{hwm['O']/1024:.0f}"),
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
accepted p99 overloaded / unloaded: {ratio:.2f} (target < 2): {'ok' if ok_ratio else 'OVER'}; ingest {o["by"]["ingest"][2] / max(u["by"]["ingest"][2], 1):.2f}, query {o["by"]["query"][2] / max(u["by"]["query"][2], 1):.2f}
loss check: {acked} acknowledged events, {missing} missing, {misplaced} at another offset, {twice} ids twice in the log: {'ok' if ok_loss else 'FAILED'}""")
sys.exit(0 if ok_rss and ok_retry and ok_loss else 1)
PY
