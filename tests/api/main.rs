//! Integration tests: the exporter against a fake Admin API on loopback.

// Test helpers are not `#[test]` functions, so clippy's test exemption does not reach them; a panic is
// exactly how a helper should fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod fixtures;
mod helpers;

mod docs;
mod failures;
mod golden;
mod health;
mod hygiene;
mod inventory;
mod organizations;
mod pagination;
mod process;
mod retries;
mod rotation;
mod upstream;
mod web;
mod web_attacks;
