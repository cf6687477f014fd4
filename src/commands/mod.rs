//! One module per subcommand, each a short story over the library's modules.

pub mod costs;
pub mod ingest;
pub mod sql;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::error::Outcome;

/// Runs the chosen subcommand.
pub async fn dispatch(cli: Cli) -> Result<Outcome> {
    let global = &cli.global;
    match &cli.command {
        Command::Ingest(args) => ingest::run(global, args).await,
        Command::Sql(args) => sql::run(global, args),
        Command::Costs(args) => costs::run(global, args).await,
    }
}
