//! Black-box tests of the emulator over real HTTP: `start()` on 127.0.0.1:0, reqwest as the client.

// Panicking on a broken fixture is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod batches;
mod faults;
mod limits;
mod plans;
mod validation;
mod webhooks;
