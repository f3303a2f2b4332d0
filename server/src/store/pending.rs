//! Objects that work will produce: created pending, then fulfilled or failed exactly
//! once; `get` and `wait` block on them, like `ray.get` and `ray.wait`. Who produces an
//! object (a task, an inference, a pipeline step) is not the store's concern: a
//! [`Settles`] guard makes sure it settles.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prism_protocol::{DType, ErrorKind};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::lease::Uses;
use super::{Entry, Lease, Meta, ObjectRef, Owner, State, Store, StoreError, encoded};

/// Why the work that should have produced an object failed. Kept in the store: every
/// `get` of the object answers it.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
    /// Executions tried, retries included.
    pub attempts: u32,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        // 0: it never ran (what it depended on failed, or its producer stopped).
        match self.attempts {
            0 => Ok(()),
            1 => write!(f, " (after 1 attempt)"),
            n => write!(f, " (after {n} attempts)"),
        }
    }
}

impl Failure {
    /// The failure of work whose input `what` has no value: the input's own failure,
    /// kind and all, or `ObjectLost` when it is gone.
    pub fn upstream(what: &str, e: StoreError) -> Failure {
        match e {
            StoreError::Failed { failure, .. } => Failure {
                message: format!("{what} failed: {}", failure.message),
                attempts: 0,
                ..failure
            },
            other => Failure {
                kind: ErrorKind::ObjectLost,
                message: format!("{what}: {other}"),
                attempts: 0,
            },
        }
    }
}

/// Fails a pending object when its producer ends without settling it (a panic, a task
/// cancelled at shutdown), so that nobody waits for it forever. Dropping it after the
/// object settled does nothing.
pub struct Settles {
    store: Arc<Store>,
    object_ref: ObjectRef,
    producer: &'static str,
}

impl Settles {
    pub fn new(store: Arc<Store>, object_ref: ObjectRef, producer: &'static str) -> Self {
        Settles {
            store,
            object_ref,
            producer,
        }
    }
}

impl Drop for Settles {
    fn drop(&mut self) {
        self.store.fail(
            self.object_ref,
            Failure {
                kind: ErrorKind::Lost,
                message: format!("{} stopped before producing this object", self.producer),
                attempts: 0,
            },
        );
    }
}

impl Store {
    /// A pending object, to be fulfilled or failed by the work that produces it; refused
    /// when the store holds `max_objects` already.
    pub fn create_pending(&self, owner: Owner) -> Result<ObjectRef, StoreError> {
        self.room_for_one_more()?;
        let mut g = self.lock();
        let tick = g.next_tick();
        let r = g.fresh_ref();
        let entry = Entry {
            state: State::Pending,
            uses: Arc::new(Uses(AtomicUsize::new(0))),
            owner,
            last_access: tick,
            expires: None,
            settled: watch::Sender::new(false),
            settled_seq: 0,
            spilling: false,
        };
        g.insert(r, entry);
        Ok(r)
    }

    /// Gives a pending object its value. If the object was deleted meanwhile the value is
    /// dropped; if the store cannot hold it, the object fails with `StoreFull` and that is
    /// the error.
    pub fn fulfil(self: &Arc<Self>, r: ObjectRef, meta: Meta, bytes: &[u8]) -> Result<(), StoreError> {
        if !self.is_pending(r) {
            return Ok(());
        }
        let (reservation, buf) = match self.copy_in(bytes) {
            Ok(copied) => copied,
            Err(e) => {
                let failure = Failure {
                    kind: ErrorKind::StoreFull,
                    message: e.to_string(),
                    attempts: 1,
                };
                self.fail(r, failure);
                return Err(e);
            }
        };
        let mut g = self.lock();
        if !g.objects.get(&r).is_some_and(|e| matches!(e.state, State::Pending)) {
            // Deleted (or settled) while the bytes were copied; the reservation gives its
            // room back once the lock is released.
            drop(g);
            return Ok(());
        }
        let old = g.objects.remove(&r).expect("checked above");
        reservation.keep();
        let mut entry = g.ready_entry(meta, buf, old.owner);
        entry.settled = old.settled;
        entry.uses = old.uses;
        entry.settled.send_replace(true);
        g.insert(r, entry);
        Ok(())
    }

    fn is_pending(&self, r: ObjectRef) -> bool {
        self.lock()
            .objects
            .get(&r)
            .is_some_and(|e| matches!(e.state, State::Pending))
    }

    /// Fulfils `r` with `y` stored as `datatype` (the answer of a model or a task), as
    /// [`Store::fulfil`] does. FP32 values are copied once, straight into the store; other
    /// datatypes are encoded first.
    pub async fn fulfil_array(
        self: &Arc<Self>,
        r: ObjectRef,
        y: ndarray::ArrayD<f32>,
        datatype: DType,
    ) -> Result<(), StoreError> {
        let store = Arc::clone(self);
        // If the blocking task dies, the object stays pending until its `Settles` guard
        // fails it.
        tokio::task::spawn_blocking(move || {
            let y = y.as_standard_layout();
            let meta = Meta {
                datatype,
                shape: y.shape().to_vec(),
            };
            store.fulfil(r, meta, &encoded(y.as_slice().expect("standard layout"), datatype))
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Internal(format!("storing a result stopped: {e}"))))
    }

    /// Settles a pending object as failed; an object already settled (or deleted) is
    /// left as it is.
    pub fn fail(&self, r: ObjectRef, failure: Failure) {
        let mut g = self.lock();
        g.settled_seq += 1;
        let seq = g.settled_seq;
        let tick = g.next_tick();
        if let Some(e) = g.objects.get_mut(&r)
            && matches!(e.state, State::Pending)
        {
            e.state = State::Failed(failure);
            e.settled_seq = seq;
            e.touch(tick, Instant::now());
            e.settled.send_replace(true);
        }
    }

    /// Waits until `r` has settled: `Ok` once ready, its failure once failed, `NotFound`
    /// when it is gone. Takes no lease and counts as no access.
    pub async fn settled(&self, r: ObjectRef) -> Result<(), StoreError> {
        let mut settled = {
            let g = self.lock();
            g.objects.get(&r).ok_or(StoreError::NotFound(r))?.settled.subscribe()
        };
        let _ = settled.wait_for(|s| *s).await;
        match self.lock().objects.get(&r).map(|e| &e.state) {
            Some(State::Ready { .. }) => Ok(()),
            Some(State::Failed(failure)) => Err(StoreError::Failed {
                object_ref: r,
                failure: failure.clone(),
            }),
            Some(State::Pending) | None => Err(StoreError::NotFound(r)),
        }
    }

    /// Waits until `r` is ready (or failed), for at most `timeout` (forever with `None`),
    /// then leases it, like `ray.get`.
    pub async fn get(self: &Arc<Self>, r: ObjectRef, timeout: Option<Duration>) -> Result<Lease, StoreError> {
        let mut settled = {
            let g = self.lock();
            g.objects.get(&r).ok_or(StoreError::NotFound(r))?.settled.subscribe()
        };
        let wait = settled.wait_for(|s| *s);
        match timeout {
            Some(t) => {
                if tokio::time::timeout(t, wait).await.is_err() {
                    return Err(StoreError::Timeout {
                        object_ref: r,
                        timeout: t,
                    });
                }
            }
            None => {
                let _ = wait.await;
            }
        }
        // Settled, or deleted (its sender dropped): `lease` tells which.
        let lease = self.lease(r)?.ok_or(StoreError::NotFound(r))?;
        if !lease.is_spilled() {
            return Ok(lease);
        }
        let store = Arc::clone(self);
        let held = lease.clone();
        Ok(tokio::task::spawn_blocking(move || store.restore(held))
            .await
            .unwrap_or(lease))
    }

    /// `ray.wait`: returns once `num_returns` of `refs` are ready (or failed) or
    /// `timeout` has passed: `(ready, not_ready)`, ready in the order they settled, at
    /// most `num_returns` of them; not_ready in the order given.
    pub async fn wait(
        &self,
        refs: &[ObjectRef],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<(Vec<ObjectRef>, Vec<ObjectRef>), StoreError> {
        let mut done: Vec<(u64, ObjectRef)> = Vec::new();
        let mut pending = FuturesUnordered::new();
        {
            let g = self.lock();
            for &r in refs {
                let e = g.objects.get(&r).ok_or(StoreError::NotFound(r))?;
                if *e.settled.borrow() {
                    done.push((e.settled_seq, r));
                } else {
                    let mut rx = e.settled.subscribe();
                    pending.push(async move {
                        let _ = rx.wait_for(|s| *s).await;
                        r
                    });
                }
            }
        }
        done.sort_unstable();
        let mut ready: Vec<ObjectRef> = done.into_iter().map(|(_, r)| r).collect();
        // A timeout too large to add is no deadline at all.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        while ready.len() < num_returns && !pending.is_empty() {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.next().await,
            };
            match next {
                Some(r) => ready.push(r),
                None => break,
            }
        }
        ready.truncate(num_returns);
        let is_ready: std::collections::HashSet<ObjectRef> = ready.iter().copied().collect();
        let not_ready = refs.iter().filter(|r| !is_ready.contains(r)).copied().collect();
        Ok((ready, not_ready))
    }
}
