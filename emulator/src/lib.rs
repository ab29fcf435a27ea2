//! The Pictify emulator: a local stand-in for Pictify's batch API, webhooks and renderer.

pub mod render;
