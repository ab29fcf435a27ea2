//! `pictify-emulator` binary.
fn main() {}
