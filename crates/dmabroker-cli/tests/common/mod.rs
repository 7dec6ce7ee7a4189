//! Shared by this crate's integration tests (`mod common;`); not every test
//! file uses every helper.
#![allow(dead_code)]

pub mod broker;
