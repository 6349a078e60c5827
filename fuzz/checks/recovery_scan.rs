//! Fuzz target: the recovery scanner (`recovery::scan_bytes`, the scan recovery runs over
//! a segment after a crash) on arbitrary segment bytes, the segment's base offset being
//! the first batch's (as a segment file is named). It must never panic, and what it keeps
//! must be right: the valid prefix is never longer than the input, is exactly a sequence
//! of CRC-valid batches with continuous offsets from the base, ends where the next offset
//! says, stops (with a reason) only where the next batch is bad and not a tail of zeros
//! (space allocated ahead of the appends, the end of the data), and its rebuilt index
//! points at batch starts inside it.
//!
//! Shared by the fuzz target and the corpus replay unit test (`src/fuzz_corpus.rs`).

use weir::log::batch::{check_batch, records};
use weir::log::recovery::scan_bytes;

/// Runs the target on one input; panics on a bug.
pub fn check(data: &[u8]) {
    let base = data
        .get(..8)
        .map_or(0, |b| i64::from_be_bytes(b.try_into().expect("8 bytes")));
    let scan = scan_bytes(data, base);
    let valid = usize::try_from(scan.valid_len).expect("fits");
    assert!(valid <= data.len(), "valid prefix longer than the input");
    // It stops early with a reason unless only zeros follow (space allocated ahead).
    let zeros_follow = data[valid..].iter().all(|b| *b == 0);
    assert_eq!(scan.stop.is_none(), zeros_follow, "{:?}", scan.stop);

    let mut pos = 0;
    let mut next = base;
    let mut starts = Vec::new();
    let mut max_ts = i64::MIN;
    while pos < valid {
        let header = check_batch(&data[pos..valid], usize::MAX)
            .unwrap_or_else(|e| panic!("kept batch at byte {pos} is not valid: {e}"));
        assert_eq!(
            header.base_offset, next,
            "offsets not continuous at byte {pos}"
        );
        let len = header.total_len();
        assert!(
            pos + len <= valid,
            "kept batch at byte {pos} runs past the prefix"
        );
        let batch = &data[pos..pos + len];
        assert!(records(batch).expect("records").all(|r| r.is_ok()));
        starts.push((u32::try_from(header.base_offset - base).ok(), pos));
        max_ts = max_ts.max(header.max_timestamp);
        next = header.next_offset();
        pos += len;
    }
    assert_eq!(pos, valid);
    assert_eq!(scan.next_offset, next);
    assert_eq!(scan.max_timestamp_ms, max_ts);
    for entry in &scan.index {
        let at = usize::try_from(entry.position).expect("fits");
        assert!(
            starts.contains(&(Some(entry.rel_offset), at)),
            "index entry {entry:?} is not a kept batch's start"
        );
    }
    if valid < data.len() {
        // The next batch must really be bad: a CRC-valid batch with the right base offset
        // there would be data recovery throws away.
        if let Ok(header) = check_batch(&data[valid..], usize::MAX)
            && header.base_offset == next
        {
            assert!(
                records(&data[valid..valid + header.total_len()])
                    .map(|mut r| r.any(|x| x.is_err()))
                    .unwrap_or(true),
                "a good batch at byte {valid} was cut: {:?}",
                scan.stop
            );
        }
    }
}
