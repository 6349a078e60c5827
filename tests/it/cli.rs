//! The command line: --version, check-config, run's overrides, the data dir lock.

use std::process::Command;

use crate::util::{BIN, Weir, config, field};

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_the_example_and_lists_every_problem() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\nmax_bodyy = \"1MiB\"\n\n[[topic]]\nname = \"../x\"\npartitions = 0\nfsync_interval = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.listen",
        "server.max_bodyy",
        "topic[0].name",
        "topic[0].partitions",
        "topic[0].fsync_interval",
        ":2:",
        ":3:",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

#[test]
fn run_flags_override_the_file_and_the_data_dir_is_created_and_locked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    // The file names a data dir and port that the flags replace.
    std::fs::write(
        &cfg,
        config("").replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
            + "\n[storage]\ndata_dir = \"/nonexistent/weir\"\n",
    )
    .unwrap();
    let data = dir.path().join("deep/er/data");
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = loop {
        let line = lines.next().expect("weir exited").unwrap();
        if line.contains("weir listening") {
            break field(&line, "addr").unwrap();
        }
    };
    assert!(addr.starts_with("127.0.0.1:") && addr != "127.0.0.1:1");
    assert_eq!(
        std::fs::read_to_string(data.join("format_version")).unwrap(),
        "1\n"
    );

    // A second weir on the same data dir refuses to start, saying why.
    let out = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another weir"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sigterm_stops_cleanly_and_the_next_start_skips_the_scan() {
    let mut w = Weir::start(&config("wrap = true\ndefault_event_type = \"t\""));
    assert_eq!(w.post("/v1/topics/events/events", r#"{"a":1}"#).status, 202);
    let status = w.stop();
    assert!(status.success(), "{status:?}\n{}", w.log_text());
    w.restart();
    assert_eq!(w.open_field("clean"), "true");
    w.kill9();
    w.restart();
    assert_eq!(w.open_field("clean"), "false");
}

#[test]
fn partitions_dropped_from_the_config_are_reported_not_served() {
    let mut w = Weir::start(&config("default_event_type = \"t\""));
    for i in 0..8 {
        let r = w.post(
            &format!("/v1/topics/events/events?key=k{i}"),
            r#"{"payload":1}"#,
        );
        assert_eq!(r.status, 202);
    }
    assert!(w.stop().success());
    w.edit_config(|c| c.replace("partitions = 4", "partitions = 2"));
    w.restart();
    assert!(
        w.log_text()
            .contains("partitions beyond the configured count"),
        "{}",
        w.log_text()
    );
    assert_eq!(w.get("/v1/topics/events").json()["partitions"], 2);
}
