//! Harness shared by the integration test crates: a strict parser of the Prometheus text format with a
//! queryable scrape ([`exposition`]), the exporter configured for tests and running in-process
//! ([`exporter`]), the JSON of the Admin API as the fakes serve it ([`admin_api`]), and the
//! repository's files and their YAML ([`files`]).
//!
//! Every crate includes it with `mod common;` (the `api` crate, a directory, with
//! `#[path = "../common/mod.rs"] mod common;`).

// Each test crate uses a different part of the harness; what one crate leaves unused is not dead.
#![allow(dead_code)]

pub(crate) mod admin_api;
pub(crate) mod exporter;
pub(crate) mod exposition;
pub(crate) mod files;
