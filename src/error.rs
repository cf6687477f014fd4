//! Exit codes, a documented contract, and the errors that choose them.

/// The process exit codes (see README, "Exit codes").
pub mod exit {
    /// Everything done, nothing needs attention.
    pub const SUCCESS: u8 = 0;
    /// The run could not finish (I/O error, S3 or Clazar unreachable after retries, bad SQL).
    pub const FAILURE: u8 = 1;
    /// Bad usage or configuration: fix the command line, environment or permissions.
    pub const CONFIG: u8 = 2;
    /// The run finished, but something needs attention (rejected input, failed submissions).
    pub const ATTENTION: u8 = 3;
    /// State conflict: another run holds the lease, or the state on S3 changed underneath.
    pub const CONFLICT: u8 = 4;
}

/// How a finished command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    NeedsAttention,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => exit::SUCCESS,
            Outcome::NeedsAttention => exit::ATTENTION,
        }
    }

    /// The worse of two outcomes.
    pub fn and(self, other: Outcome) -> Outcome {
        if self == Outcome::NeedsAttention || other == Outcome::NeedsAttention {
            Outcome::NeedsAttention
        } else {
            Outcome::Success
        }
    }
}

/// Errors whose kind decides the exit code. Anything else is [`exit::FAILURE`].
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// Bad configuration, permissions, or input the operator must fix.
    #[error("{0}")]
    Config(String),
    /// Another run holds the lease, or the state changed underneath.
    #[error("{0}")]
    Conflict(String),
}

/// What an error asks of the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// Fix the configuration, credentials or permissions.
    Config,
    /// Resolve a conflict with another run or host.
    Conflict,
}

/// What an error asks of the operator, if anything: the first [`Fatal`] in its context chain, or
/// an S3 error that asks for something (see [`crate::s3::S3Error::demand`]).
pub fn demand(err: &anyhow::Error) -> Option<Demand> {
    err.chain().find_map(|cause| {
        if let Some(f) = cause.downcast_ref::<Fatal>() {
            return Some(match f {
                Fatal::Config(_) => Demand::Config,
                Fatal::Conflict(_) => Demand::Conflict,
            });
        }
        cause
            .downcast_ref::<crate::s3::S3Error>()
            .and_then(|e| e.demand())
    })
}

/// The exit code for an error, looking through its context chain.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    match demand(err) {
        Some(Demand::Config) => exit::CONFIG,
        Some(Demand::Conflict) => exit::CONFLICT,
        None => exit::FAILURE,
    }
}

/// What kind of thing a failed cycle ran into, for the health check: one word, never the error's
/// text (which names buckets, URLs and client ids; it stays in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Settings, credentials or permissions the operator must fix.
    Config,
    /// Another run holds the lease, or the state on S3 changed underneath.
    Conflict,
    /// Reading Omnistrate's export.
    Export,
    /// Reading or writing the ledger's state or lease on S3.
    State,
    /// Talking to Clazar.
    Clazar,
    /// The local ledger (SQLite, its disk).
    Ledger,
    /// Anything else.
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Config => "config",
            FailureKind::Conflict => "conflict",
            FailureKind::Export => "export",
            FailureKind::State => "state",
            FailureKind::Clazar => "clazar",
            FailureKind::Ledger => "ledger",
            FailureKind::Other => "other",
        }
    }

    /// The kind of an error: what it asks of the operator ([`demand`]) first, then a SQLite error
    /// (the ledger), then the (outermost) [`Step`] it happened in.
    pub fn of(err: &anyhow::Error) -> FailureKind {
        match demand(err) {
            Some(Demand::Config) => return FailureKind::Config,
            Some(Demand::Conflict) => return FailureKind::Conflict,
            None => {}
        }
        if err
            .chain()
            .any(|cause| cause.downcast_ref::<rusqlite::Error>().is_some())
        {
            return FailureKind::Ledger;
        }
        err.downcast_ref::<Step>()
            .map_or(FailureKind::Other, |s| s.kind)
    }
}

/// Context for an error: the step it happened in (its text) and what that step talks to.
#[derive(Debug)]
pub struct Step {
    pub kind: FailureKind,
    pub what: &'static str,
}

impl Step {
    pub fn new(kind: FailureKind, what: &'static str) -> Step {
        Step { kind, what }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn failure_kinds_prefer_what_the_operator_must_do_then_the_ledger_then_the_step() {
        let s3 = Err::<(), _>(anyhow::anyhow!("reading s3://bucket/key: timeout"))
            .context(Step::new(FailureKind::State, "pulling the ledger"))
            .unwrap_err();
        assert_eq!(FailureKind::of(&s3), FailureKind::State);
        assert_eq!(s3.to_string(), "pulling the ledger");

        let denied = Err::<(), _>(Fatal::Config("access denied".into()))
            .context(Step::new(FailureKind::Export, "ingesting"))
            .unwrap_err();
        assert_eq!(FailureKind::of(&denied), FailureKind::Config);

        let held = anyhow::Error::from(Fatal::Conflict("lease held".into()));
        assert_eq!(FailureKind::of(&held), FailureKind::Conflict);

        let sqlite = Err::<(), _>(rusqlite::Error::InvalidQuery)
            .context("storing a file")
            .context(Step::new(FailureKind::Export, "ingesting"))
            .unwrap_err();
        assert_eq!(FailureKind::of(&sqlite), FailureKind::Ledger);

        // A step under further context still names the kind.
        let nested = Err::<(), _>(anyhow::anyhow!("refused"))
            .context(Step::new(FailureKind::Clazar, "sending"))
            .context("the cycle")
            .unwrap_err();
        assert_eq!(FailureKind::of(&nested), FailureKind::Clazar);
        assert_eq!(
            FailureKind::of(&anyhow::anyhow!("what")),
            FailureKind::Other
        );
    }
}
