//! weir-loadgen: HTTP load for the ingest benchmarks in BENCHMARKS.md and the overload
//! measurement (benches/overload.sh).
//!
//! Each of `--connections` keep-alive connections sends POSTs back to back (closed
//! loop), or paced to `--rate` over all connections (open loop). A request carries
//! `--events` envelopes of about 200 bytes plus `--pad` (NDJSON when more than one), each
//! with a unique event_id and a user key, so dedup and partitioning do their real work.
//! `--query-share` of the requests are GETs of `--query-path` instead. A connection the
//! server closes (`Connection: close`, as on a 503 at accept) or that fails is opened
//! again for the next request. Bodies are patched in place from a template so the
//! generator spends its CPU on sending. Prints one human line and one JSON line
//! (`{"rps":..,"eps":..,"p50_us":..,"statuses":{..},"accepted_p99_us":..}`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Command line (clap): every flag has the default the benchmarks use.
#[derive(clap::Parser)]
#[command(
    name = "weir-loadgen",
    about = "HTTP ingest and query load for weir's benchmarks"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, default_value = "/v1/topics/clickstream/events")]
    path: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Envelopes per request (NDJSON when more than one).
    #[arg(long, default_value_t = 1)]
    events: usize,
    /// Seconds measured.
    #[arg(long, default_value = "10", value_parser = seconds)]
    duration: Duration,
    /// Seconds sent before measuring.
    #[arg(long, default_value = "2", value_parser = seconds)]
    warmup: Duration,
    /// Bare objects instead of envelopes.
    #[arg(long)]
    bare: bool,
    /// Requests per second over all connections; 0 sends back to back.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Stamp every request's events with the current wall time instead of a fixed one,
    /// so a pipeline's windows and watermark follow the clock (benches/freshness.sh).
    #[arg(long)]
    live_time: bool,
    /// Bytes of padding in each event's payload: sizes the bodies (in-flight bytes).
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// A path to GET for `--query-share` of the requests (e.g. a `[[route]]` query).
    #[arg(long)]
    query_path: Option<String>,
    /// Share of the requests that GET `--query-path`, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    query_share: f64,
    /// Writes one line per 202 of the measured part: the event_id prefix of the request
    /// (each event's id is the prefix, `-` and its index as 5 digits), a tab and the
    /// answer's body (its offsets), for a loss check.
    #[arg(long)]
    acked_out: Option<std::path::PathBuf>,
    /// Writes one line per 2xx of the measured part: its kind (`ingest_kept`,
    /// `ingest_opened`, `query_kept`, `query_opened`: on a kept-alive connection or one
    /// opened for it), a space and its latency in microseconds; runs split in rounds pool
    /// them for their percentiles (benches/overload.sh).
    #[arg(long)]
    latencies_out: Option<std::path::PathBuf>,
    /// Starts every event_id (then the connection number): runs against the same topic
    /// need different prefixes, or dedup takes the second run's events as duplicates.
    #[arg(long, default_value = "L")]
    id_prefix: String,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|e| format!("{e}"))
}

/// Width of the request sequence number patched into every event_id.
const SEQ_DIGITS: usize = 12;

/// The fixed event time of the templates: 24 bytes, the width of every RFC 3339
/// millisecond UTC time of years 0000-9999, so `--live-time` patches it in place.
const FIXED_TIME: &str = "2026-11-27T10:00:00.000Z";

/// A request body template and where each event's sequence digits and time sit.
struct Template {
    body: Vec<u8>,
    seq_at: Vec<usize>,
    time_at: Vec<usize>,
}

fn template(conn: usize, events: usize, bare: bool, pad: usize, prefix: &str) -> Template {
    // Only with --pad, so that the ingest benchmarks' bodies stay as they were.
    let pad = if pad > 0 {
        format!(",\"pad\":\"{}\"", "x".repeat(pad))
    } else {
        String::new()
    };
    let mut body = Vec::new();
    let mut seq_at = Vec::new();
    let mut time_at = Vec::new();
    for i in 0..events {
        let user = (conn * 7919 + i * 104_729) % 10_000;
        let page = (conn * 31 + i * 17) % 1000;
        if bare {
            body.extend_from_slice(format!(
                "{{\"user_id\":\"u-{user}\",\"page_id\":\"page-{page}\",\"timestamp\":\"{FIXED_TIME}\",\"session\":\"s-{user:06}\",\"referrer\":\"/home/landing\"}}"
            ).as_bytes());
        } else {
            body.extend_from_slice(format!("{{\"event_id\":\"{prefix}{conn:04}-").as_bytes());
            seq_at.push(body.len());
            body.extend_from_slice(format!(
                "{:0SEQ_DIGITS$}-{i:05}\",\"event_type\":\"page.click\",\"timestamp\":\"{FIXED_TIME}\",\"payload\":{{\"user_id\":\"u-{user}\",\"page_id\":\"page-{page}\",\"session\":\"s-{user:06}\",\"referrer\":\"/home/landing\",\"ua\":\"Mozilla/5.0\"{pad}}}}}",
                0
            ).as_bytes());
        }
        if let Some(at) = memchr::memmem::rfind(&body, FIXED_TIME.as_bytes()) {
            time_at.push(at);
        }
        if events > 1 {
            body.push(b'\n');
        }
    }
    Template {
        body,
        seq_at,
        time_at,
    }
}

/// Writes the current wall time over every event's time.
fn patch_time(t: &mut Template) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut text = Vec::with_capacity(FIXED_TIME.len());
    weir::event::format_rfc3339_ms(now_ms, &mut text);
    for &at in &t.time_at {
        t.body[at..at + FIXED_TIME.len()].copy_from_slice(&text);
    }
}

fn patch(t: &mut Template, seq: u64) {
    let mut digits = [b'0'; SEQ_DIGITS];
    let mut n = seq;
    for d in digits.iter_mut().rev() {
        *d = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
    }
    for &at in &t.seq_at {
        t.body[at..at + SEQ_DIGITS].copy_from_slice(&digits);
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    latencies_us: Vec<u32>,
    /// Latencies of the 2xx answers, by kind, indexed by [`Kind::index`]: where an
    /// overload's tail comes from.
    accepted_by_kind: [Vec<u32>; 4],
    /// 503 answers without Retry-After.
    no_retry_after: u64,
    /// Requests that got no answer (connect, write or read failed; the connection closed).
    errors: u64,
    /// A few of the errors' texts, distinct.
    error_kinds: std::collections::BTreeMap<String, u64>,
    /// Sends more than 10 ms behind the open-loop schedule (the generator fell behind).
    late: u64,
    /// `--acked-out` lines.
    acked: Vec<String>,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        let text = e.to_string();
        if self.error_kinds.len() < 8 || self.error_kinds.contains_key(&text) {
            *self.error_kinds.entry(text).or_default() += 1;
        }
    }

    fn merge(&mut self, t: Tally) {
        self.ok += t.ok;
        self.failed += t.failed;
        for (k, v) in t.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.latencies_us.extend(t.latencies_us);
        for (all, some) in self.accepted_by_kind.iter_mut().zip(t.accepted_by_kind) {
            all.extend(some);
        }
        self.no_retry_after += t.no_retry_after;
        self.errors += t.errors;
        for (k, v) in t.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        self.late += t.late;
        self.acked.extend(t.acked);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// What a request was: an ingest or a query, on a kept-alive connection or on one opened
/// for it (its latency then includes the connect and the server's accept).
struct Kind {
    query: bool,
    opened: bool,
}

impl Kind {
    const NAMES: [&str; 4] = ["ingest_kept", "ingest_opened", "query_kept", "query_opened"];

    fn index(&self) -> usize {
        usize::from(self.query) * 2 + usize::from(self.opened)
    }
}

async fn connect(addr: &str) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    Ok(sender)
}

/// Whether request `seq` of a connection is a query: spreads `share` evenly.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a share of a request count"
)]
fn is_query(seq: u64, share: f64) -> bool {
    share > 0.0 && ((seq + 1) as f64 * share).floor() > (seq as f64 * share).floor()
}

async fn connection(args: std::sync::Arc<Args>, conn: usize, start: Instant) -> Tally {
    let mut sender: Option<Sender> = None;
    let mut t = template(conn, args.events, args.bare, args.pad, &args.id_prefix);
    let mut tally = Tally::default();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let content_type = if args.events > 1 {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let mut seq = 0u64;
    // Open-loop pacing when --rate is set: each connection sends every connections/rate s.
    #[allow(clippy::cast_precision_loss, reason = "a pacing interval")]
    let pace =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    // Connections start spread over one interval, not all at once.
    #[allow(clippy::cast_precision_loss, reason = "a fraction of an interval")]
    let mut next_send = Instant::now()
        + pace.map_or(Duration::ZERO, |p| {
            p.mul_f64(conn as f64 / args.connections.max(1) as f64)
        });
    loop {
        if let Some(p) = pace {
            tokio::time::sleep_until(next_send.into()).await;
            if next_send.elapsed() > Duration::from_millis(10) && Instant::now() >= measure_from {
                tally.late += 1;
            }
            next_send += p;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let measured = sent >= measure_from;
        let query = match &args.query_path {
            Some(path) if is_query(seq, args.query_share) => Some(path),
            _ => None,
        };
        patch(&mut t, seq);
        if args.live_time {
            patch_time(&mut t);
        }
        let prefix_seq = seq;
        seq += 1;
        let req = match query {
            Some(path) => Request::get(path.as_str())
                .header("host", &args.addr)
                .body(Full::new(Bytes::new())),
            None => Request::post(&args.path)
                .header("host", &args.addr)
                .header("content-type", content_type)
                .body(Full::new(Bytes::copy_from_slice(&t.body))),
        }
        .expect("a valid request");
        let mut opened = false;
        let open = match sender.take() {
            Some(s) if !s.is_closed() => Ok(s),
            _ => {
                opened = true;
                connect(&args.addr).await
            }
        };
        let mut s = match open {
            Ok(s) => s,
            Err(e) => {
                if measured {
                    tally.error(format!("connect: {e}"));
                }
                continue;
            }
        };
        let answer = async {
            s.ready().await.map_err(|e| e.to_string())?;
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let close = resp
                .headers()
                .get(hyper::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let retry_after = resp.headers().contains_key(hyper::header::RETRY_AFTER);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, close, retry_after, body))
        }
        .await;
        let (status, close, retry_after, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                if measured {
                    tally.error(e);
                }
                continue;
            }
        };
        if !close {
            sender = Some(s);
        }
        if !measured {
            continue;
        }
        let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        tally.latencies_us.push(us);
        *tally.statuses.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            tally.ok += 1;
            let kind = Kind {
                query: query.is_some(),
                opened,
            };
            tally.accepted_by_kind[kind.index()].push(us);
        } else {
            tally.failed += 1;
        }
        if status == 503 && !retry_after {
            tally.no_retry_after += 1;
        }
        if status == 202 && query.is_none() && args.acked_out.is_some() && !args.bare {
            tally.acked.push(format!(
                "{}{conn:04}-{prefix_seq:0SEQ_DIGITS$}\t{}",
                args.id_prefix,
                String::from_utf8_lossy(&body)
            ));
        }
    }
    tally
}

/// The `q` quantile of sorted `lat`, 0 when empty.
fn pct(lat: &[u32], q: f64) -> u32 {
    if lat.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a sorted sample"
    )]
    let i = ((lat.len() - 1) as f64 * q).round() as usize;
    lat[i]
}

fn main() {
    let args = std::sync::Arc::new(<Args as clap::Parser>::parse());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut total = runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| tokio::spawn(connection(std::sync::Arc::clone(&args), c, start)))
            .collect();
        let mut total = Tally::default();
        for t in tasks {
            match t.await {
                Ok(t) => total.merge(t),
                Err(e) => eprintln!("task failed: {e}"),
            }
        }
        total
    });
    if let Some(path) = &args.acked_out {
        let mut text = total.acked.join("\n");
        text.push('\n');
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if let Some(path) = &args.latencies_out {
        let mut text = String::new();
        for (name, lat) in Kind::NAMES.iter().zip(&total.accepted_by_kind) {
            for us in lat {
                text.push_str(&format!("{name} {us}\n"));
            }
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    let mut lat = total.latencies_us;
    lat.sort_unstable();
    let mut accepted = total.accepted_by_kind.concat();
    accepted.sort_unstable();
    let by_kind: Vec<String> = Kind::NAMES
        .iter()
        .zip(total.accepted_by_kind.iter_mut())
        .map(|(name, lat)| {
            lat.sort_unstable();
            format!(
                "\"{name}\":{{\"n\":{},\"p50_us\":{},\"p99_us\":{}}}",
                lat.len(),
                pct(lat, 0.5),
                pct(lat, 0.99)
            )
        })
        .collect();
    let secs = args.duration.as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "rates for humans")]
    let (rps, eps) = (
        total.ok as f64 / secs,
        (total.ok * args.events as u64) as f64 / secs,
    );
    eprintln!(
        "{} connections, {} events/request: {rps:.0} req/s, {eps:.0} events/s, p50 {} us, p99 {} us, \
         accepted p50 {} us p99 {} us ({{{}}}), statuses {:?}, 503 without Retry-After {}, errors {} {:?}, late sends {}",
        args.connections,
        args.events,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&accepted, 0.5),
        pct(&accepted, 0.99),
        by_kind.join(","),
        total.statuses,
        total.no_retry_after,
        total.errors,
        total.error_kinds,
        total.late
    );
    let statuses: Vec<String> = total
        .statuses
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    #[allow(clippy::print_stdout, reason = "the JSON result line is the output")]
    {
        println!(
            "{{\"rps\":{rps:.1},\"eps\":{eps:.1},\"p50_us\":{},\"p99_us\":{},\"ok\":{},\"failed\":{},\
             \"accepted_p50_us\":{},\"accepted_p99_us\":{},\"accepted_by_kind\":{{{}}},\"statuses\":{{{}}},\
             \"no_retry_after\":{},\"errors\":{},\"late\":{}}}",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            total.ok,
            total.failed,
            pct(&accepted, 0.5),
            pct(&accepted, 0.99),
            by_kind.join(","),
            statuses.join(","),
            total.no_retry_after,
            total.errors,
            total.late
        );
    }
}
