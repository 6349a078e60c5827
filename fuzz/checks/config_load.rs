//! Fuzz target: the config loader on arbitrary TOML text, as `weir check-config` runs it
//! (`Config::load` reads the file, then `Config::parse`). It must never panic, and a
//! refusal must say where: at least one problem, each with a message and a key path or a
//! line inside the text.
//!
//! Shared by the fuzz target and the corpus replay unit test (`src/fuzz_corpus.rs`).

use std::path::Path;
use weir::config::Config;

/// Runs the target on one input; panics on a bug.
pub fn check(data: &[u8]) {
    // `Config::load` refuses a file that is not UTF-8 before parsing; the parser sees text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(errors) = Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    assert!(!errors.problems.is_empty(), "a refusal without a problem");
    let lines = text.lines().count().max(1);
    for problem in &errors.problems {
        assert!(
            !problem.message.is_empty(),
            "a problem without a message: {problem:?}"
        );
        assert!(
            !problem.key_path.is_empty() || problem.line.is_some(),
            "a problem that names neither a key nor a line: {problem:?}"
        );
        if let Some(line) = problem.line {
            assert!(
                (1..=lines + 1).contains(&line),
                "line {line} outside the text's {lines} lines: {problem:?}"
            );
        }
    }
    let _ = errors.to_string();
}
