//! Shared by this crate's integration tests (`mod common;`); not every test
//! file uses every helper.
#![allow(dead_code)]

#[path = "../../../dmabroker/tests/common/skip.rs"]
mod skip_rule;
#[allow(unused_imports)]
pub use skip_rule::{in_vm, skip, skip_for_tool};

pub mod broker;
pub mod fdstore;
