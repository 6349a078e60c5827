//! weir-readgen: read-side load for benches/read.sh.
//!
//! - `--mode pull`: one connection pages through a topic with cursor reads
//!   (`cursor=earliest`, `limit=10000`) until it reaches the end or `--duration` passes;
//!   reports events/s and MB/s of answer bytes (envelope bytes alone are
//!   `weir_read_bytes_total`, which benches/read.sh reads around the run).
//! - `--mode sse`: `--streams` concurrent SSE streams (`?from=` `--from`) for `--duration`;
//!   reports events/s in total and of the slowest stream, and at the end each stream's lag
//!   (records between its last id and the topic's end offsets at that moment).
//!
//! Prints one human line and one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
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
    #[arg(long, default_value = "pull", value_parser = ["pull", "sse"])]
    mode: String,
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Seconds.
    #[arg(long, default_value = "10", value_parser = seconds)]
    duration: Duration,
    /// Where streams start: `earliest`, `latest` or an event time.
    #[arg(long, default_value = "earliest")]
    from: String,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|e| format!("{e}"))
}

async fn connect(addr: &str) -> Result<SendRequest<Empty<Bytes>>, String> {
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
    let mut sender = connect(&args.addr).await?;
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
    let mut sender = connect(&args.addr).await?;
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
    let mut admin = connect(&args.addr).await?;
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

fn main() {
    let args = Arc::new(<Args as clap::Parser>::parse());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        if args.mode == "pull" {
            pull(&args).await
        } else {
            sse(Arc::clone(&args)).await
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
