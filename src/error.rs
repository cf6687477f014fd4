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

/// The exit code for an error, looking through its context chain.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Fatal>() {
            return match f {
                Fatal::Config(_) => exit::CONFIG,
                Fatal::Conflict(_) => exit::CONFLICT,
            };
        }
    }
    exit::FAILURE
}
