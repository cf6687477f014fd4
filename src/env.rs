//! The predecessor's rule for its environment: a variable set to an empty string is unset.
//!
//! Its Omnistrate compose file passes every variable whether the operator filled it in or not, so
//! `START_MONTH=""`, `DRY_RUN=""` or `DIMENSION2_NAME=""` arrive empty and mean "not set". Before
//! the command line is parsed, [`unset_empty`] removes every empty (or blank) variable that
//! meterbook reads from the process environment, so that clap, the credential lookups and the
//! formula loader all see the same thing: nothing. Other programs' variables are left alone.

use std::collections::BTreeSet;

use clap::CommandFactory;

use crate::cli::Cli;

/// Variables meterbook reads that are not the environment form of a flag.
const READ_DIRECTLY: &[&str] = &[
    "CLAZAR_CLIENT_ID",
    "CLAZAR_CLIENT_SECRET",
    "S3_BUCKET_NAME",
    "AWS_S3_BUCKET_NAME",
    "STATE_FILE_PATH",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    // The predecessor's AWS settings, read by aws-config.
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
];

/// Families of variables: meterbook's own, and the formulas (`DIMENSION_<name>`,
/// `DIMENSION<n>_NAME`, `DIMENSION<n>_FORMULA`).
const PREFIXES: &[&str] = &["METERBOOK_", "DIMENSION"];

/// Every environment variable a flag of `meterbook` (any subcommand) reads.
fn flag_variables() -> BTreeSet<String> {
    fn collect(cmd: &clap::Command, into: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(name) = arg.get_env().and_then(|n| n.to_str()) {
                into.insert(name.to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, into);
        }
    }
    let mut names = BTreeSet::new();
    collect(&Cli::command(), &mut names);
    names
}

/// Is `name` a variable meterbook reads?
fn is_ours(name: &str, flag_variables: &BTreeSet<String>) -> bool {
    flag_variables.contains(name)
        || READ_DIRECTLY.contains(&name)
        || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Removes meterbook's variables whose value is empty or blank from the process environment and
/// returns their names (never values). Call it first thing in `main`, before any thread starts.
pub fn unset_empty() -> Vec<String> {
    let ours = flag_variables();
    let empty: Vec<String> = std::env::vars_os()
        .filter(|(_, value)| value.to_str().is_some_and(|v| v.trim().is_empty()))
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| is_ours(name, &ours))
        .collect();
    for name in &empty {
        std::env::remove_var(name);
    }
    empty
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_the_predecessor_reads_is_ours() {
        let flags = flag_variables();
        for name in [
            "DRY_RUN",
            "START_MONTH",
            "CRON_MODE",
            "MAX_MONTHS_PER_RUN",
            "MAX_HOURS_PER_RUN",
            "MAX_RETRIES",
            "LOG_LEVEL",
            "PROCESSING_INTERVAL_SECONDS",
            "HEALTHCHECK_PORT",
            "CLAZAR_CLIENT_ID",
            "CLAZAR_CLIENT_SECRET",
            "CLAZAR_CLOUD",
            "CLAZAR_API_URL",
            "SERVICE_NAME",
            "ENVIRONMENT_TYPE",
            "PLAN_ID",
            "AWS_S3_BUCKET_NAME",
            "S3_BUCKET_NAME",
            "STATE_FILE_PATH",
            "AWS_REGION",
            "DIMENSION2_NAME",
            "DIMENSION2_FORMULA",
            "DIMENSION_memory_gb_hours",
            "METERBOOK_STATE_URL",
            "METERBOOK_LOG",
        ] {
            assert!(is_ours(name, &flags), "{name}");
        }
    }

    #[test]
    fn other_programs_variables_are_not_ours() {
        let flags = flag_variables();
        for name in ["PATH", "HOME", "LANG", "AWS_SESSION_TOKEN", "TERM"] {
            assert!(!is_ours(name, &flags), "{name}");
        }
    }
}
