//! meterbook: a usage ledger for Omnistrate exports, reported to Clazar exactly once.
//!
//! The binary (`main.rs`) is a thin shell over this library, which the integration tests also use.
//! Start at [`commands`] for what each subcommand does.

pub mod clazar;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod costs;
pub mod cycle;
pub mod daemon;
pub mod dimensions;
pub mod doctor;
pub mod env;
pub mod error;
pub mod failpoint;
pub mod formula;
pub mod ingest;
pub mod ledger;
pub mod output;
pub mod period;
pub mod plan;
pub mod predecessor;
pub mod progress;
pub mod s3;
pub mod secret;
pub mod source;
pub mod submit;
pub mod sync;
