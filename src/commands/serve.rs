//! `meterbook serve`: the read-only web console and `/metrics` over the ledger.

use anyhow::Result;

use crate::cli::{GlobalArgs, ServeArgs};
use crate::console::{serve, Settings};
use crate::error::{Fatal, Outcome};

pub async fn run(global: &GlobalArgs, args: &ServeArgs) -> Result<Outcome> {
    let token = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if token.is_some_and(|t| t.len() < 16) {
        return Err(Fatal::Config(
            "the console's token (METERBOOK_SERVE_TOKEN, --token) must be at least 16 characters"
                .into(),
        )
        .into());
    }
    serve(Settings {
        listen: args.listen,
        token: token.map(str::to_string),
        ledger: global.ledger_file(),
    })
    .await?;
    Ok(Outcome::Success)
}
