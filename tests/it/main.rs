//! The one integration-test binary: every test starts the real weir on port 0 in a
//! fresh temp dir and talks HTTP to it, as a user would.

// Tests do arithmetic on small counts and offsets they created themselves.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod util;

mod badinput;
mod cli;
mod clock;
mod corruption;
mod crash;
mod crashloop;
mod failpoints;
mod groups;
mod ingest;
mod lifecycle;
mod model;
mod observability;
mod ops;
mod overload;
mod pipelines;
mod powerfs;
mod powerloss;
mod read;
mod retention;
mod storage;
mod stream;
mod systemd;
