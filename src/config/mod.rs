//! Configuration: the TOML file (a raw serde mirror) validated into typed settings.

pub mod units;
