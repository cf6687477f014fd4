//! One module per subcommand, each a short story over the library's modules.

pub mod costs;
pub mod doctor;
pub mod history;
pub mod import_state;
pub mod ingest;
pub mod resubmit;
pub mod run;
pub mod serve;
pub mod sql;
pub mod submit;
pub mod sync;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::error::Outcome;

/// Runs the chosen subcommand.
pub async fn dispatch(cli: Cli) -> Result<Outcome> {
    let global = &cli.global;
    match &cli.command {
        Command::Ingest(args) => ingest::run(global, args).await,
        Command::Sql(args) => sql::run(global, args),
        Command::Sync(args) => sync::run(global, args).await,
        Command::Doctor(args) => doctor::run(global, args).await,
        Command::Run(args) => run::run(global, args).await,
        Command::ImportState(args) => import_state::run(global, args).await,
        Command::Submit(args) => submit::run(global, args).await,
        Command::History(args) => history::run(global, args),
        Command::Resubmit(args) => resubmit::run(global, args).await,
        Command::Costs(args) => costs::run(global, args).await,
        Command::Serve(args) => serve::run(global, args).await,
    }
}
