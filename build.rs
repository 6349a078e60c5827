//! Records the compiler version for the `weir_build_info` metric.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    // "rustc 1.95.0 (59807616e 2026-04-14)" -> "1.95.0"
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WEIR_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-changed=build.rs");
}
