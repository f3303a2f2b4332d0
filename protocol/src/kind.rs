//! The kinds of failure: one name per way work can fail, shared by the deployment file
//! (`retry_exceptions`), the server's retry rule, the metrics' `reason` label, and the
//! `kind` of a failed object.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an execution (a batch, a task, a pipeline step) failed.
///
/// `Panic` is a system failure, always retried while retries last; the application
/// errors are retried only where `retry_exceptions` names them; the rest describe work
/// that never ran to completion and are never retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The code running the work panicked.
    Panic,
    /// `fault_injection` chose this execution to fail.
    InjectedFault,
    /// A model refused the batch (a kernel error).
    ModelError,
    /// A tensor's shape does not fit the model or the op.
    ShapeError,
    /// A request that cannot be run as it is written (a bad datatype, parameter or body).
    InvalidInput,
    /// The request's own deadline passed.
    Timeout,
    /// The object store could not hold the result.
    StoreFull,
    /// An object the work needed is gone (deleted, expired, never stored).
    ObjectLost,
    /// The work's producer stopped without an answer (a bug, or the server stopping).
    Lost,
    /// The model was not ready or its queue was full, or the server is shutting down.
    Unavailable,
}

impl ErrorKind {
    /// Every kind, in the order of the enum.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Panic,
        ErrorKind::InjectedFault,
        ErrorKind::ModelError,
        ErrorKind::ShapeError,
        ErrorKind::InvalidInput,
        ErrorKind::Timeout,
        ErrorKind::StoreFull,
        ErrorKind::ObjectLost,
        ErrorKind::Lost,
        ErrorKind::Unavailable,
    ];

    /// The application errors a deployment's batch can fail with: what its
    /// `retry_exceptions` may name.
    pub const BATCH_RETRYABLE: [ErrorKind; 2] = [ErrorKind::InjectedFault, ErrorKind::ModelError];

    /// The application errors a task can fail with: what its `retry_exceptions` may name.
    pub const TASK_RETRYABLE: [ErrorKind; 2] = [ErrorKind::InjectedFault, ErrorKind::ShapeError];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Panic => "Panic",
            ErrorKind::InjectedFault => "InjectedFault",
            ErrorKind::ModelError => "ModelError",
            ErrorKind::ShapeError => "ShapeError",
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::StoreFull => "StoreFull",
            ErrorKind::ObjectLost => "ObjectLost",
            ErrorKind::Lost => "Lost",
            ErrorKind::Unavailable => "Unavailable",
        }
    }

    /// A system failure: retried whatever `retry_exceptions` says.
    pub fn is_system(self) -> bool {
        self == ErrorKind::Panic
    }

    /// `kinds` as `A, B`, for messages.
    pub fn list(kinds: &[ErrorKind]) -> String {
        kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Parses one of `allowed` (what a `retry_exceptions` list may name); the error says
    /// which kinds there are.
    pub fn parse_retryable(name: &str, allowed: &[ErrorKind]) -> Result<ErrorKind, String> {
        match name.parse::<ErrorKind>() {
            Ok(k) if allowed.contains(&k) => Ok(k),
            _ => Err(format!(
                "unknown error kind `{name}`; the kinds are {}",
                ErrorKind::list(allowed)
            )),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!(
                "unknown error kind `{s}`; the kinds are {}",
                ErrorKind::list(&ErrorKind::ALL)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name_and_json() {
        for k in ErrorKind::ALL {
            assert_eq!(k.as_str().parse::<ErrorKind>(), Ok(k));
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
            assert_eq!(
                serde_json::from_value::<ErrorKind>(serde_json::json!(k.as_str())).unwrap(),
                k
            );
        }
    }

    #[test]
    fn retryable_kinds_are_checked_against_their_list() {
        assert_eq!(
            ErrorKind::parse_retryable("ModelError", &ErrorKind::BATCH_RETRYABLE),
            Ok(ErrorKind::ModelError)
        );
        let err = ErrorKind::parse_retryable("ShapeError", &ErrorKind::BATCH_RETRYABLE).unwrap_err();
        assert_eq!(
            err,
            "unknown error kind `ShapeError`; the kinds are InjectedFault, ModelError"
        );
        assert!(ErrorKind::parse_retryable("ValueError", &ErrorKind::TASK_RETRYABLE).is_err());
        assert!(ErrorKind::Panic.is_system() && !ErrorKind::InjectedFault.is_system());
    }
}
