//! The fuzz targets' committed corpora, replayed on every `cargo test` (no nightly, no
//! cargo-fuzz): each file of `fuzz/corpus/<target>/` goes through the same check the
//! target runs (`fuzz/checks/<target>.rs`), so a regression in the batch decoder, the
//! recovery scanner, the body parser or the config loader shows without fuzzing.
//! The corpora are minimized (`cargo fuzz cmin`) and include every crash found, so the
//! replay takes well under a second.

use std::path::Path;

#[path = "../fuzz/checks/batch_decode.rs"]
pub(crate) mod batch_decode;
#[path = "../fuzz/checks/body_parse.rs"]
mod body_parse;
#[path = "../fuzz/checks/config_load.rs"]
mod config_load;
#[path = "../fuzz/checks/recovery_scan.rs"]
mod recovery_scan;

/// Runs `check` on every file of the target's corpus; a panic names the file.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{} holds only {} inputs",
        dir.display(),
        files.len()
    );
    for path in files {
        let data = std::fs::read(&path).expect("a corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            panic!("{target}: {} fails: {why}", path.display());
        }
    }
}

#[test]
fn batch_decode_corpus() {
    replay("batch_decode", batch_decode::check);
}

#[test]
fn recovery_scan_corpus() {
    replay("recovery_scan", recovery_scan::check);
}

#[test]
fn body_parse_corpus() {
    replay("body_parse", body_parse::check);
}

#[test]
fn config_load_corpus() {
    replay("config_load", config_load::check);
}
