//! Fuzz target `batch_decode`: see `fuzz/checks/batch_decode.rs` for what it checks.

#![no_main]

#[path = "../checks/batch_decode.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
