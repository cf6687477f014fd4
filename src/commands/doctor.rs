//! `meterbook doctor`: runs every check (see [`crate::doctor`]) and prints one line per check on
//! stdout: `ok`, `warn` or `FAIL` with what to fix; a failed check makes the exit code 2.

use std::io::Write;

use anyhow::Result;

use crate::cli::{DoctorArgs, GlobalArgs};
use crate::config::{DoctorSettings, Environment};
use crate::doctor::{Setup, Verdict, CHECKS};
use crate::error::{Fatal, Outcome};

pub async fn run(global: &GlobalArgs, args: &DoctorArgs, env: &Environment) -> Result<Outcome> {
    let setup = Setup::new(DoctorSettings::resolve(global, args, env)).await;
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for check in CHECKS {
        let line = match (check.run)(&setup).await {
            Verdict::Ok(detail) => format!("ok    {}: {detail}", check.name),
            Verdict::Warn(detail) => format!("warn  {}: {detail}", check.name),
            Verdict::Fail { problem, fix } => {
                failed += 1;
                format!("FAIL  {}: {problem}; fix: {fix}", check.name)
            }
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    if failed > 0 {
        return Err(Fatal::Config(format!("{failed} of {} checks failed", CHECKS.len())).into());
    }
    Ok(Outcome::Success)
}
