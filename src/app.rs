//! Wiring: metrics, the log, the HTTP server, and the ordered shutdown.
//!
//! Start: install the metrics recorder, open the log (lock, recovery, dedup rebuild) on
//! a blocking thread, start a thread per pipeline, bind the listener, serve. While
//! serving, the reload task (`reload::run`) applies each SIGHUP. Stop: drain (new writes
//! 503, in-flight requests finish within `shutdown_grace`), let a reload under way end,
//! stop the pipeline threads (final checkpoints), then close the log (final fsync,
//! indexes, clean-shutdown marker).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::disk::{self, DiskSpace};
use crate::http::{self, AppState};
use crate::log::Log;
use crate::metrics as m;
use crate::pipeline::runner::Pipelines;
use crate::reload::{self, Reloads};
use crate::store::Store;

/// How often histogram samples are folded into their buckets, bounding their memory.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

pub async fn run(
    config: Config,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
    reloads: Reloads,
) -> anyhow::Result<()> {
    let handle = m::install().context("installing the metrics recorder")?;
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    let listen = config.server.listen;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "listening beyond loopback: weir has no authentication yet");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let data_dir = config.storage.data_dir.clone();
    let open_config = config.clone();
    let (log, report) = tokio::task::spawn_blocking(move || Log::open(&open_config, clock))
        .await
        .context("log recovery thread")?
        .with_context(|| format!("opening data dir {}", data_dir.display()))?;
    tracing::info!(
        data_dir = %data_dir.display(),
        clean = report.clean,
        partitions = report.partitions,
        scanned_bytes = report.scanned_bytes,
        truncated_bytes = report.truncated_bytes,
        dedup_ids = report.dedup_ids,
        seconds = report.seconds,
        "log open"
    );
    let log = Arc::new(log);
    let disk = Arc::new(
        DiskSpace::new(&data_dir, config.storage.free_space_reserve)
            .with_context(|| format!("reading free space of {}", data_dir.display()))?,
    );
    let refresh = Arc::clone(&disk);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(disk::REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let space = Arc::clone(&refresh);
            match tokio::task::spawn_blocking(move || space.refresh()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read free disk space"),
                Err(e) => tracing::warn!(error = %e, "free disk space task failed"),
            }
        }
    });
    log.start_retention()
        .context("starting the retention thread")?;
    let store_dir = data_dir.join("store");
    let cache = config.storage.sled_cache;
    let store = tokio::task::spawn_blocking(move || Store::open_or_rebuild(&store_dir, cache))
        .await
        .context("result store thread")?
        .context("opening the result store")?;
    let (store, pipelines) = {
        let (config, log, disk) = (config.clone(), Arc::clone(&log), Arc::clone(&disk));
        let runtime = tokio::runtime::Handle::current();
        let store_dir = data_dir.join("store");
        tokio::task::spawn_blocking(move || {
            match Pipelines::start(&config, &log, &store, &disk, &runtime) {
                // sled found damage a pipeline could not rebuild around (in its own keys):
                // the whole store is derived from the log, so it starts over once.
                Err(e) if e.is_corruption() => {
                    drop(store);
                    Store::move_aside(&store_dir, &e)?;
                    let store = Store::open(&store_dir, cache)?;
                    let pipelines = Pipelines::start(&config, &log, &store, &disk, &runtime)?;
                    Ok((store, pipelines))
                }
                result => result.map(|p| (store, p)),
            }
        })
        .await
        .context("pipeline start thread")?
        .context("starting the pipelines")?
    };
    let store = Arc::new(store);
    let pipelines = Arc::new(pipelines);
    let state = Arc::new(AppState::new(
        Arc::clone(&log),
        config.server.clone(),
        handle,
        Arc::clone(&disk),
        Arc::clone(&pipelines),
        config.routes.clone(),
    ));
    let reloader = tokio::spawn(reload::run(
        reloads,
        reload::Running {
            config,
            state: Arc::clone(&state),
            log: Arc::clone(&log),
            pipelines: Arc::clone(&pipelines),
            store: Arc::clone(&store),
            disk,
        },
    ));
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "weir listening");
    http::serve(listener, state, shutdown).await;
    // A reload under way finishes before the pipelines stop and the log closes.
    if let Err(e) = reloader.await {
        tracing::error!(error = %e, "config reload task failed");
    }
    tracing::info!("stopped serving; stopping the pipelines");
    tokio::task::spawn_blocking(move || {
        pipelines.stop();
        store.flush()
    })
    .await
    .context("pipeline stop thread")?
    .context("flushing the result store")?;
    tracing::info!("closing the log");
    tokio::task::spawn_blocking(move || log.close())
        .await
        .context("log close thread")?
        .context("closing the log")?;
    tracing::info!("clean shutdown");
    Ok(())
}
