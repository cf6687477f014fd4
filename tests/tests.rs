//! Integration tests: the real `meterbook` binary over real SQLite files, a real S3-compatible
//! server and the Clazar emulator on 127.0.0.1. One test binary, one module per area.

mod emulator;
mod s3;
mod util;

mod compact;
mod console;
mod costs;
mod daemon;
mod deploy;
mod dropin;
mod formulas;
mod hostile;
mod import_state;
mod ingest;
mod run;
mod s3_ingest;
mod sql;
mod submit;
mod sync;
