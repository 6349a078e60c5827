//! Wiring: metrics, the log, the HTTP server, and the ordered shutdown.
//!
//! Start: install the metrics recorder, open the log (lock, recovery, dedup rebuild) on
//! a blocking thread, start a thread per pipeline, bind the listener, serve. While
//! serving, the reload task (`reload::run`) applies each SIGHUP. Stop: drain (new writes
//! 503, in-flight requests finish within `shutdown_grace`), let a reload under way end,
//! stop the pipeline threads (final checkpoints), then close the log (final fsync,
//! indexes, clean-shutdown marker).
//!
//! Under systemd (`Type=notify`): before anything, refuse a `server.memory_max` above
//! the cgroup's memory limit; pet the watchdog from a task for the whole run; while
//! starting, extend the start timeout every few seconds; `READY=1` once the log is
//! recovered, the pipelines started and the listener bound, just before serving;
//! `STOPPING=1` as soon as the shutdown signal arrives.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cgroup;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::config::units::format_size;
use crate::disk::{self, DiskSpace};
use crate::http::{self, AppState};
use crate::log::Log;
use crate::metrics as m;
use crate::pipeline::runner::Pipelines;
use crate::reload::{self, Reloads};
use crate::store::Store;
use crate::systemd::{self, Notifier};

/// How often histogram samples are folded into their buckets, bounding their memory.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

pub async fn run(
    config: Config,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
    reloads: Reloads,
) -> anyhow::Result<()> {
    check_memory_max(config.server.memory_max)?;
    raise_open_files_limit(config.server.max_connections);
    let notifier = match Notifier::from_env() {
        Ok(n) => n.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open systemd's NOTIFY_SOCKET; not notifying");
            None
        }
    };
    if let Some(n) = &notifier
        && let Some(every) = n.watchdog_every()
    {
        // On the runtime, not a thread of its own: a runtime that stops running tasks
        // stops petting the watchdog, and systemd restarts weir.
        let n = Arc::clone(n);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                n.watchdog();
            }
        });
    }
    let starting = notifier.as_ref().map(|n| {
        n.status("recovering the log");
        let n = Arc::clone(n);
        AbortOnDrop(tokio::spawn(async move {
            let first = tokio::time::Instant::now() + systemd::START_EXTEND_EVERY;
            let mut tick = tokio::time::interval_at(first, systemd::START_EXTEND_EVERY);
            loop {
                tick.tick().await;
                n.extend_timeout(systemd::START_EXTEND_BY);
            }
        }))
    });

    let handle = m::install().context("installing the metrics recorder")?;
    metrics::gauge!(m::BUILD_INFO, &m::build_info_labels()[..]).set(1.0);
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
    let (log, report) = tokio::task::spawn_blocking(move || {
        // Tests make recovery slow here to see the start timeout extended.
        #[cfg(feature = "fail")]
        fail::fail_point!("app::log_open");
        Log::open(&open_config, clock)
    })
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
    tokio::spawn(watch_fsyncs(Arc::clone(&log)));
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
    store.watch_space(Arc::clone(&disk));
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
    drop(starting);
    if let Some(n) = &notifier {
        n.ready(&format!("serving on {addr}"));
    }
    let shutdown = async move {
        shutdown.await;
        if let Some(n) = &notifier {
            n.stopping();
        }
    };
    http::serve(listener, state, shutdown).await;
    // A reload under way finishes before the pipelines stop and the log closes.
    if let Err(e) = reloader.await {
        tracing::error!(error = %e, "config reload task failed");
    }
    tracing::info!("stopped serving; stopping the pipelines");
    // A store that cannot be flushed (a full disk) does not keep the log from closing
    // cleanly: the store is derived from the log, and the next start replays from the
    // last checkpoint that counted.
    let flushed = tokio::task::spawn_blocking(move || {
        pipelines.stop();
        store.flush()
    })
    .await
    .context("pipeline stop thread")?
    .context("flushing the result store");
    if let Err(e) = &flushed {
        tracing::error!(
            error = format!("{e:#}"),
            "the result store could not be flushed; the log is closed all the same"
        );
    }
    tracing::info!("closing the log");
    tokio::task::spawn_blocking(move || log.close())
        .await
        .context("log close thread")?
        .context("closing the log")?;
    flushed?;
    tracing::info!("clean shutdown");
    Ok(())
}

/// Logs an fsync round that has stalled (`log::fsync_stalled_after`) once, when it
/// crosses the bound; the round logs again when it returns. `/readyz` names it meanwhile.
async fn watch_fsyncs(log: Arc<Log>) {
    let after = crate::log::fsync_stalled_after();
    let mut tick = tokio::time::interval(FSYNC_WATCH_EVERY.min(after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        let stalled = log.stalled_fsyncs(after);
        warned.retain(|p| stalled.iter().any(|(s, _)| s == p));
        for (partition, waited) in stalled {
            if !warned.contains(&partition) {
                tracing::warn!(%partition, seconds = waited.as_secs_f64(),
                    "an fsync has not returned: the disk is stalled or failing; requests waiting for it wait on, /readyz is false until it returns");
                warned.push(partition);
            }
        }
    }
}

/// How often `watch_fsyncs` looks.
const FSYNC_WATCH_EVERY: Duration = Duration::from_secs(1);

/// Refuses a `server.memory_max` above the memory limit of weir's cgroup: the kernel
/// would kill weir before the bound its other limits are sized to is reached. A limit
/// that cannot be read is logged and not checked: it is no reason to stay down.
fn check_memory_max(memory_max: Option<u64>) -> anyhow::Result<()> {
    let limit = match cgroup::own_memory_limit() {
        Ok(Some(limit)) => limit,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cgroup memory limit; not checked");
            return Ok(());
        }
    };
    match memory_max {
        Some(bound) if bound > limit.bytes => anyhow::bail!(
            "server.memory_max ({}) is above the memory limit of weir's cgroup ({}, in {}): \
             lower server.memory_max, or raise the limit (MemoryMax= of the systemd unit)",
            format_size(bound),
            format_size(limit.bytes),
            limit.file.display()
        ),
        Some(bound) => tracing::info!(
            memory_max = %format_size(bound),
            cgroup_limit = %format_size(limit.bytes),
            "server.memory_max is within the cgroup memory limit"
        ),
        None => tracing::info!(
            cgroup_limit = %format_size(limit.bytes),
            "cgroup memory limit (server.memory_max is not set, nothing is sized to it)"
        ),
    }
    Ok(())
}

/// Descriptors weir needs beside its client sockets: segment and index files (three per
/// segment, a few segments per partition kept open), sled, the listener, pipes.
const OPEN_FILES_BESIDE_CONNECTIONS: u64 = 1024;

/// Raises the soft limit of open files to the hard limit, as daemons do: the usual soft
/// limit (1024) is below `max_connections` sockets plus the log's files, and past it
/// accept fails (EMFILE) instead of answering 503. The hard limit is the operator's
/// (`LimitNOFILE=` of the systemd unit); a limit still too low is logged.
fn raise_open_files_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open files limit (RLIMIT_NOFILE)");
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft = before, hard = limit.rlim_max,
                "cannot raise the open files limit (RLIMIT_NOFILE) to its hard limit");
        }
    }
    tracing::debug!(
        soft_before = before,
        soft = limit.rlim_cur,
        hard = limit.rlim_max,
        "open files limit (RLIMIT_NOFILE)"
    );
    let needed = (max_connections as u64).saturating_add(OPEN_FILES_BESIDE_CONNECTIONS);
    if limit.rlim_cur < needed {
        tracing::warn!(
            limit = limit.rlim_cur,
            max_connections,
            "the open files limit is below server.max_connections plus room for the log's \
             files: connections beyond it fail at accept; raise LimitNOFILE= (or ulimit -Hn)"
        );
    }
}

/// A task that ends when its handle is dropped (on every path out of `run`).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
