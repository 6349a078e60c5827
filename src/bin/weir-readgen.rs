//! weir-readgen: read-side load for benches/read.sh.
//!
//! - `--mode pull`: one connection pages through a topic with cursor reads
//!   (`cursor=earliest`, `limit=10000`) until it reaches the end or `--duration` passes;
//!   reports events/s and MB/s of answer bytes (envelope bytes alone are
//!   `weir_read_bytes_total`, which benches/read.sh reads around the run).
//! - `--mode sse`: `--streams` concurrent SSE streams (`?from=` `--from`) for `--duration`;
//!   reports events/s in total and of the slowest stream, and at the end each stream's lag
//!   (records between its last id and the topic's end offsets at that moment).
//! - `--mode freshness`: every `--probe-every` ms posts one event under a key of its own
//!   (`page_id` `probe-<n>`, the current time) and polls
//!   `GET /v1/pipelines/{--pipeline}/keys/probe-<n>` every millisecond until it answers;
//!   reports the time from sending the event to the first answer holding it (p50, p99,
//!   max) and that of the 202 alone. Run it beside `weir-loadgen --live-time --rate ..`.
//!
//! Prints one human line and one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Command line (clap): every flag has the default the benchmarks use.
#[derive(clap::Parser)]
#[command(name = "weir-readgen", about = "Read-side load for weir's benchmarks")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, default_value = "clickstream")]
    topic: String,
    #[arg(long, default_value = "pull", value_parser = ["pull", "sse", "freshness"])]
    mode: String,
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Seconds.
    #[arg(long, default_value = "10", value_parser = seconds)]
    duration: Duration,
    /// Where streams start: `earliest`, `latest` or an event time.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Freshness: the pipeline asked for the probes' keys.
    #[arg(long, default_value = "page_views")]
    pipeline: String,
    /// Freshness: milliseconds between probes.
    #[arg(long, default_value_t = 20)]
    probe_every: u64,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|e| format!("{e}"))
}

async fn connect<B>(addr: &str) -> Result<SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    Ok(sender)
}

async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: &str,
    path: &str,
) -> Result<Bytes, String> {
    let req = Request::get(path)
        .header("host", addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body)
}

/// Occurrences of `needle`, found with SIMD: the client must be far faster than the
/// server it measures (100 streams of 50,000 events/s are 5 M events/s to scan).
fn count(hay: &[u8], needle: &[u8]) -> u64 {
    memchr::memmem::find_iter(hay, needle).count() as u64
}

/// The sum of a cursor's offsets (`0-5.1-7` -> 12).
fn cursor_sum(cursor: &[u8]) -> i64 {
    String::from_utf8_lossy(cursor)
        .split('.')
        .filter_map(|pair| pair.split_once('-')?.1.trim().parse::<i64>().ok())
        .sum()
}

async fn pull(args: &Args) -> Result<String, String> {
    let mut sender: SendRequest<Empty<Bytes>> = connect(&args.addr).await?;
    let mut cursor = "earliest".to_string();
    let (mut events, mut body_bytes) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < args.duration {
        let path = format!(
            "/v1/topics/{}/events?cursor={cursor}&limit=10000",
            args.topic
        );
        let body = get(&mut sender, &args.addr, &path).await?;
        let n = count(&body, b"{\"partition\":");
        if n == 0 {
            break;
        }
        events += n;
        body_bytes += body.len() as u64;
        let at = body
            .windows(15)
            .rposition(|w| w == b"\"next_cursor\":\"")
            .ok_or("no next_cursor")?;
        let rest = &body[at + 15..];
        let end = rest
            .iter()
            .position(|&b| b == b'"')
            .ok_or("bad next_cursor")?;
        cursor = String::from_utf8_lossy(&rest[..end]).to_string();
    }
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "rates for humans")]
    let (eps, mbps) = (events as f64 / secs, body_bytes as f64 / secs / 1e6);
    eprintln!("pull: {events} events in {secs:.2} s: {eps:.0} events/s, {mbps:.0} MB/s of answers");
    Ok(format!(
        "{{\"mode\":\"pull\",\"events\":{events},\"seconds\":{secs:.3},\"eps\":{eps:.1},\"mbps\":{mbps:.1}}}"
    ))
}

struct StreamTally {
    events: AtomicU64,
    /// Sum of the last id's offsets.
    position: AtomicI64,
}

async fn one_stream(args: Arc<Args>, tally: Arc<StreamTally>, end: Instant) -> Result<(), String> {
    let mut sender: SendRequest<Empty<Bytes>> = connect(&args.addr).await?;
    let path = format!("/v1/topics/{}/stream?from={}", args.topic, args.from);
    let req = Request::get(&path)
        .header("host", &args.addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{path}: {}", resp.status()));
    }
    let mut body = resp.into_body();
    // The tail of the previous frame: an event may be split across frames.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let Ok(frame) = tokio::time::timeout(left, body.frame()).await else {
            return Ok(());
        };
        let Some(frame) = frame else { return Ok(()) };
        let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else {
            continue;
        };
        carry.extend_from_slice(&data);
        let Some(last_end) = memchr::memmem::rfind(&carry, b"\n\n") else {
            continue;
        };
        let complete = &carry[..last_end + 2];
        tally
            .events
            .fetch_add(count(complete, b"\ndata: "), Ordering::Relaxed);
        if let Some(at) = memchr::memmem::rfind(complete, b"id: ") {
            let line_end = complete[at..].iter().position(|&b| b == b'\n').unwrap_or(0);
            tally.position.store(
                cursor_sum(&complete[at + 4..at + line_end]),
                Ordering::Relaxed,
            );
        }
        carry.drain(..last_end + 2);
    }
}

async fn sse(args: Arc<Args>) -> Result<String, String> {
    let started = Instant::now();
    let end = started + args.duration;
    let tallies: Vec<Arc<StreamTally>> = (0..args.streams)
        .map(|_| {
            Arc::new(StreamTally {
                events: AtomicU64::new(0),
                position: AtomicI64::new(-1),
            })
        })
        .collect();
    let tasks: Vec<_> = tallies
        .iter()
        .map(|t| tokio::spawn(one_stream(Arc::clone(&args), Arc::clone(t), end)))
        .collect();
    // Lag is measured just before the end, while the streams still run.
    tokio::time::sleep_until((end - Duration::from_millis(500)).into()).await;
    // Connected now: weir closes connections idle for longer than header_timeout.
    let mut admin: SendRequest<Empty<Bytes>> = connect(&args.addr).await?;
    let topic = get(
        &mut admin,
        &args.addr,
        &format!("/v1/topics/{}", args.topic),
    )
    .await?;
    let positions: Vec<i64> = tallies
        .iter()
        .map(|t| t.position.load(Ordering::Relaxed))
        .collect();
    let json = String::from_utf8_lossy(&topic).to_string();
    let ends_sum: i64 = json
        .split("\"end_offsets\":[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse::<i64>().ok())
                .sum()
        })
        .ok_or("no end_offsets")?;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("stream failed: {e}"),
            Err(e) => eprintln!("stream task failed: {e}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let counts: Vec<u64> = tallies
        .iter()
        .map(|t| t.events.load(Ordering::Relaxed))
        .collect();
    let total: u64 = counts.iter().sum();
    let slowest = counts.iter().copied().min().unwrap_or(0);
    let lag_max = positions
        .iter()
        .map(|&p| ends_sum - p.max(0))
        .max()
        .unwrap_or(0);
    #[allow(clippy::cast_precision_loss, reason = "rates for humans")]
    let (eps, slowest_eps) = (total as f64 / secs, slowest as f64 / secs);
    eprintln!(
        "sse: {} streams, {total} events in {secs:.2} s: {eps:.0} events/s in total, slowest stream {slowest_eps:.0} events/s, max lag {lag_max} records",
        args.streams
    );
    Ok(format!(
        "{{\"mode\":\"sse\",\"streams\":{},\"events\":{total},\"seconds\":{secs:.3},\"eps\":{eps:.1},\"slowest_eps\":{slowest_eps:.1},\"lag_max\":{lag_max}}}",
        args.streams
    ))
}

/// Status of a request and its whole body.
async fn status_of<B: hyper::body::Body + Send + 'static>(
    sender: &mut SendRequest<B>,
    req: Request<B>,
) -> Result<u16, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a sorted sample; milliseconds for humans"
    )]
    let v = sorted_us[((sorted_us.len() - 1) as f64 * q).round() as usize] as f64;
    v / 1000.0
}

async fn freshness(args: &Args) -> Result<String, String> {
    let mut post: SendRequest<Full<Bytes>> = connect(&args.addr).await?;
    let mut poll: SendRequest<Empty<Bytes>> = connect(&args.addr).await?;
    let run = format!("{:x}", now_ms());
    let (mut seen_us, mut ack_us, mut after_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut missed = 0u32;
    let started = Instant::now();
    let mut next = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < args.duration {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_millis(args.probe_every);
        n += 1;
        let key = format!("probe-{run}-{n}");
        let mut time = Vec::new();
        weir::event::format_rfc3339_ms(now_ms(), &mut time);
        let body = format!(
            "{{\"event_id\":\"{key}\",\"event_type\":\"page.click\",\"timestamp\":\"{}\",\"payload\":{{\"user_id\":\"probe\",\"page_id\":\"{key}\"}}}}",
            String::from_utf8_lossy(&time)
        );
        let req = Request::post(format!("/v1/topics/{}/events", args.topic))
            .header("host", &args.addr)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let sent = Instant::now();
        let status = status_of(&mut post, req).await?;
        if status != 202 {
            return Err(format!("probe {key}: ingest answered {status}"));
        }
        let acked = Instant::now();
        ack_us.push(u64::try_from((acked - sent).as_micros()).unwrap_or(u64::MAX));
        let path = format!("/v1/pipelines/{}/keys/{key}?window=latest", args.pipeline);
        let deadline = sent + Duration::from_secs(5);
        loop {
            let req = Request::get(&path)
                .header("host", &args.addr)
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            if status_of(&mut poll, req).await? == 200 {
                seen_us.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                after_us.push(u64::try_from(acked.elapsed().as_micros()).unwrap_or(u64::MAX));
                break;
            }
            if Instant::now() >= deadline {
                missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    seen_us.sort_unstable();
    ack_us.sort_unstable();
    after_us.sort_unstable();
    let (after50, after99) = (quantile_ms(&after_us, 0.5), quantile_ms(&after_us, 0.99));
    let (p50, p99, max) = (
        quantile_ms(&seen_us, 0.5),
        quantile_ms(&seen_us, 0.99),
        quantile_ms(&seen_us, 1.0),
    );
    let (ack50, ack99) = (quantile_ms(&ack_us, 0.5), quantile_ms(&ack_us, 0.99));
    eprintln!(
        "freshness: {n} probes, {missed} not seen within 5 s; sent -> in the answer p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; the 202 alone p50 {ack50:.2} ms, p99 {ack99:.2} ms; from the 202 to the answer p50 {after50:.2} ms, p99 {after99:.2} ms"
    );
    Ok(format!(
        "{{\"mode\":\"freshness\",\"probes\":{n},\"missed\":{missed},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"max_ms\":{max:.3},\"ack_p50_ms\":{ack50:.3},\"ack_p99_ms\":{ack99:.3},\"after_ack_p50_ms\":{after50:.3},\"after_ack_p99_ms\":{after99:.3}}}"
    ))
}

fn main() {
    let args = Arc::new(<Args as clap::Parser>::parse());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        match args.mode.as_str() {
            "pull" => pull(&args).await,
            "freshness" => freshness(&args).await,
            _ => sse(Arc::clone(&args)).await,
        }
    });
    match result {
        Ok(line) => {
            #[allow(clippy::print_stdout, reason = "the JSON result line is the output")]
            {
                println!("{line}");
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
