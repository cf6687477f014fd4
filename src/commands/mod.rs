//! One module per subcommand, each a short story: resolve the settings (`config`), call the
//! library, print the result.

pub mod compact;
pub mod costs;
pub mod doctor;
pub mod health;
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
use crate::config::Environment;
use crate::error::Outcome;

/// Runs the chosen subcommand, with the environment read once.
pub async fn dispatch(cli: Cli) -> Result<Outcome> {
    let env = Environment::read();
    let global = &cli.global;
    match &cli.command {
        Command::Ingest(args) => ingest::run(global, args, &env).await,
        Command::Sql(args) => sql::run(global, args),
        Command::Sync(args) => sync::run(global, args, &env).await,
        Command::Doctor(args) => doctor::run(global, args, &env).await,
        Command::Run(args) => run::run(global, args, &env).await,
        Command::ImportState(args) => import_state::run(global, args, &env).await,
        Command::Submit(args) => submit::run(global, args, &env).await,
        Command::History(args) => history::run(global, args),
        Command::Resubmit(args) => resubmit::run(global, args, &env).await,
        Command::Costs(args) => costs::run(global, args, &env).await,
        Command::Health(args) => health::run(args).await,
        Command::Compact(args) => compact::run(global, args),
        Command::Serve(args) => serve::run(global, args).await,
    }
}
