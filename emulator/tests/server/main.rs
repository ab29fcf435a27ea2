//! Black-box tests of the emulator over real HTTP: `start()` on 127.0.0.1:0, reqwest as the client.

mod support;

mod batches;
mod faults;
mod limits;
mod validation;
mod webhooks;
