//! Fuzz target `recovery_scan`: see `fuzz/checks/recovery_scan.rs` for what it checks.

#![no_main]

#[path = "../checks/recovery_scan.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
