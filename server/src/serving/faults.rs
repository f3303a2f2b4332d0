//! Failure handling shared by a deployment's batches and by tasks: the fault injection's
//! dice, the one retry loop, and what a caught panic says.
//!
//! Plain functions over closures: no channels, no metrics, no store, so the retry rule
//! is tested here once for both callers.

use prism_config::{ErrorKind, FaultInjection, Retries};
use rand::Rng;

/// Rolls `faults`' dice for one execution (a deployment's batch or a task): sleeps when
/// the delay is chosen, and says whether this execution must fail.
pub fn injected_failure(faults: &FaultInjection) -> bool {
    if !faults.is_active() {
        return false;
    }
    let mut rng = rand::rng();
    if faults.delay_rate > 0.0 && rng.random_bool(faults.delay_rate) {
        std::thread::sleep(faults.delay);
    }
    faults.error_rate > 0.0 && rng.random_bool(faults.error_rate)
}

/// What a caught panic says.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A failed execution as the retry loop sees it.
pub trait Retryable {
    /// The kind `retry_exceptions` would name, or `None` for a failure that running
    /// again cannot mend (the work was lost, the server is stopping).
    fn retry_kind(&self) -> Option<ErrorKind>;
}

/// Runs `attempt` until it succeeds; or fails with a kind `retries` does not retry; or
/// its retries are spent; or `abandoned()` says nobody waits for the answer any more.
/// `on_retry` hears the kind of each failed try that runs again (for the metrics). A
/// failure comes back with the number of executions that ran, retries included.
pub fn with_retries<T, E: Retryable>(
    retries: &Retries,
    mut attempt: impl FnMut() -> Result<T, E>,
    abandoned: impl Fn() -> bool,
    mut on_retry: impl FnMut(ErrorKind, u32),
) -> Result<T, (E, u32)> {
    let mut attempts = 1;
    loop {
        let error = match attempt() {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        match error.retry_kind() {
            Some(kind) if retries.again(kind, attempts) && !abandoned() => {
                on_retry(kind, attempts);
                attempts += 1;
            }
            _ => return Err((error, attempts)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Fault(Option<ErrorKind>);

    impl Retryable for Fault {
        fn retry_kind(&self) -> Option<ErrorKind> {
            self.0
        }
    }

    fn retries(max_retries: u32, named: &[ErrorKind]) -> Retries {
        Retries {
            max_retries,
            retry_exceptions: named.to_vec(),
        }
    }

    /// Fails with `kind` `failures` times, then succeeds; returns the outcome, the
    /// executions and the retries reported.
    fn run(r: &Retries, kind: Option<ErrorKind>, failures: u32) -> (Result<u32, (Fault, u32)>, u32, Vec<ErrorKind>) {
        let calls = Cell::new(0);
        let mut reported = Vec::new();
        let outcome = with_retries(
            r,
            || {
                calls.set(calls.get() + 1);
                if calls.get() <= failures {
                    Err(Fault(kind))
                } else {
                    Ok(calls.get())
                }
            },
            || false,
            |k, _| reported.push(k),
        );
        (outcome, calls.get(), reported)
    }

    #[test]
    fn a_panic_is_retried_until_the_retries_are_spent() {
        let r = retries(2, &[]);
        let (outcome, calls, reported) = run(&r, Some(ErrorKind::Panic), 2);
        assert_eq!((outcome.unwrap(), calls), (3, 3), "two retries were enough");
        assert_eq!(reported, vec![ErrorKind::Panic; 2]);
        let (outcome, calls, _) = run(&r, Some(ErrorKind::Panic), 5);
        assert_eq!(outcome.unwrap_err(), (Fault(Some(ErrorKind::Panic)), 3));
        assert_eq!(calls, 3, "1 execution + max_retries");
    }

    #[test]
    fn an_application_error_is_retried_only_when_named() {
        let (outcome, calls, reported) = run(&retries(3, &[]), Some(ErrorKind::InjectedFault), 1);
        assert_eq!(outcome.unwrap_err().1, 1);
        assert_eq!((calls, reported.len()), (1, 0));
        let named = retries(3, &[ErrorKind::InjectedFault]);
        let (outcome, calls, _) = run(&named, Some(ErrorKind::InjectedFault), 1);
        assert_eq!((outcome.unwrap(), calls), (2, 2));
        let (outcome, _, _) = run(&named, Some(ErrorKind::ModelError), 1);
        assert_eq!(outcome.unwrap_err().1, 1, "another kind is not retried");
    }

    #[test]
    fn what_cannot_be_mended_and_work_nobody_waits_for_are_not_retried() {
        let (outcome, calls, _) = run(&retries(3, &[]), None, 1);
        assert_eq!((outcome.unwrap_err().1, calls), (1, 1));
        let calls = Cell::new(0);
        let outcome: Result<(), _> = with_retries(
            &retries(3, &[]),
            || {
                calls.set(calls.get() + 1);
                Err(Fault(Some(ErrorKind::Panic)))
            },
            || true,
            |_, _| panic!("nothing is retried"),
        );
        assert_eq!(outcome.unwrap_err().1, 1);
        assert_eq!(calls.get(), 1);
    }
}
