//! weir-loadgen: closed-loop HTTP load for the ingest benchmarks in BENCHMARKS.md.
//!
//! Each of `--connections` keep-alive connections sends POSTs back to back. A request
//! carries `--events` envelopes of about 200 bytes (NDJSON when more than one), each with
//! a unique event_id and a user key, so dedup and partitioning do their real work. Bodies
//! are patched in place from a template so the generator spends its CPU on sending.
//! Prints one human line and one JSON line (`{"rps":..,"eps":..,"p50_us":..}`).

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
    about = "Closed-loop HTTP ingest load for weir's benchmarks"
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

fn template(conn: usize, events: usize, bare: bool) -> Template {
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
            body.extend_from_slice(format!("{{\"event_id\":\"L{conn:04}-").as_bytes());
            seq_at.push(body.len());
            body.extend_from_slice(format!(
                "{:0SEQ_DIGITS$}-{i:05}\",\"event_type\":\"page.click\",\"timestamp\":\"{FIXED_TIME}\",\"payload\":{{\"user_id\":\"u-{user}\",\"page_id\":\"page-{page}\",\"session\":\"s-{user:06}\",\"referrer\":\"/home/landing\",\"ua\":\"Mozilla/5.0\"}}}}",
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
}

async fn connection(
    args: std::sync::Arc<Args>,
    conn: usize,
    start: Instant,
) -> Result<Tally, String> {
    let stream = TcpStream::connect(&args.addr)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    let mut t = template(conn, args.events, args.bare);
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
    let mut next_send = Instant::now();
    loop {
        if let Some(p) = pace {
            tokio::time::sleep_until(next_send.into()).await;
            next_send += p;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        patch(&mut t, seq);
        if args.live_time {
            patch_time(&mut t);
        }
        seq += 1;
        let req = Request::post(&args.path)
            .header("host", &args.addr)
            .header("content-type", content_type)
            .body(Full::new(Bytes::copy_from_slice(&t.body)))
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let _ = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if sent >= measure_from {
            let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
            tally.latencies_us.push(us);
            *tally.statuses.entry(status).or_default() += 1;
            if (200..300).contains(&status) {
                tally.ok += 1
            } else {
                tally.failed += 1
            }
        }
    }
    Ok(tally)
}

fn main() {
    let args = std::sync::Arc::new(<Args as clap::Parser>::parse());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total = runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| tokio::spawn(connection(std::sync::Arc::clone(&args), c, start)))
            .collect();
        let mut total = Tally::default();
        for t in tasks {
            match t.await {
                Ok(Ok(t)) => {
                    total.ok += t.ok;
                    total.failed += t.failed;
                    for (k, v) in t.statuses {
                        *total.statuses.entry(k).or_default() += v;
                    }
                    total.latencies_us.extend(t.latencies_us);
                }
                Ok(Err(e)) => eprintln!("connection failed: {e}"),
                Err(e) => eprintln!("task failed: {e}"),
            }
        }
        total
    });
    let mut lat = total.latencies_us;
    lat.sort_unstable();
    let pct = |q: f64| -> u32 {
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
    };
    let secs = args.duration.as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "rates for humans")]
    let (rps, eps) = (
        total.ok as f64 / secs,
        (total.ok * args.events as u64) as f64 / secs,
    );
    eprintln!(
        "{} connections, {} events/request: {rps:.0} req/s, {eps:.0} events/s, p50 {} us, p99 {} us, statuses {:?}",
        args.connections,
        args.events,
        pct(0.5),
        pct(0.99),
        total.statuses
    );
    #[allow(clippy::print_stdout, reason = "the JSON result line is the output")]
    {
        println!(
            "{{\"rps\":{rps:.1},\"eps\":{eps:.1},\"p50_us\":{},\"p99_us\":{},\"ok\":{},\"failed\":{}}}",
            pct(0.5),
            pct(0.99),
            total.ok,
            total.failed
        );
    }
}
