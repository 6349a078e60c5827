//! Fuzz target `body_parse`: see `fuzz/checks/body_parse.rs` for what it checks.

#![no_main]

#[path = "../checks/body_parse.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
