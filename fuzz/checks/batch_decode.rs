//! Fuzz target: every decoding entry point of the RecordBatch codec on arbitrary bytes.
//! Any panic is a bug: recovery feeds these functions whatever a crash left on disk.
//!
//! Shared by the fuzz target and the corpus replay unit test (`src/fuzz_corpus.rs`).

use weir::log::batch::{BatchHeader, check_batch, records};

/// Runs the target on one input; panics on a bug.
pub fn check(data: &[u8]) {
    let _ = BatchHeader::parse(data);
    let _ = check_batch(data, 1 << 20);
    // records() does not check the CRC, so garbage with a plausible header reaches the
    // record and header parsers directly.
    if let Ok(records) = records(data) {
        for record in records.flatten() {
            for header in record.headers() {
                let _ = header;
            }
            let _ = record.header("weir.id");
        }
    }
}
