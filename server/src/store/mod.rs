//! The object store: immutable tensors addressed by random 128-bit [`ObjectRef`]s.
//!
//! * Capacity is `object_store_memory` bytes of 64-byte-aligned heap memory (page-locked
//!   when a GPU is present, [`buffer`]). When a put needs room, the least recently used
//!   objects that nothing is using are written to files under `spill_dir` and
//!   memory-mapped from there; an access brings a spilled object back into memory when
//!   room can be made, and reads it from the mapping when not ([`spill`]).
//! * An object in use (a [`Lease`]: a queued request, a running task, a response being
//!   sent) is never spilled, and its bytes outlive a `DELETE`: the lease keeps them.
//! * Objects handed to clients expire `ttl` after their last access; the server's own
//!   intermediates ([`Owner::Server`]) live until their owner deletes them.
//! * An object may be created pending (the result of async work) and later fulfilled or
//!   failed; [`Store::get`] and [`Store::wait`] block on that, like `ray.get` and
//!   `ray.wait` ([`pending`]).
//!
//! When even spilling cannot make room, a put fails with [`StoreError::Full`] and nothing
//! already stored is touched.
//!
//! This module owns the objects' bytes and their accounts; it knows nothing of requests,
//! models or HTTP. Every change of the byte accounts and the gauges goes through
//! [`Inner`]'s methods, under the store's one lock.

mod buffer;
mod lease;
mod pending;
mod spill;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prism_kernels::cuda::PinnedAllocator;
use prism_protocol::DType;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use buffer::{AlignedBuf, Data};
pub use buffer::{Buffer, free_space};
pub use lease::Lease;
use lease::Uses;
pub use pending::{Failure, Settles};
pub use spill::Reservation;

use crate::metrics::StoreMetrics;

/// A 128-bit random object id, written as 32 lowercase hex digits. Never sequential:
/// knowing one ref tells nothing of another.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef(u128);

impl ObjectRef {
    fn random() -> Self {
        ObjectRef(rand::random())
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({self})")
    }
}

impl FromStr for ObjectRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{s}` is not an object ref (32 hex digits)"));
        }
        u128::from_str_radix(s, 16)
            .map(ObjectRef)
            .map_err(|e| format!("`{s}`: {e}"))
    }
}

impl Serialize for ObjectRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a tensor is: its datatype and shape. Its bytes are the little-endian elements,
/// row-major, as in the V2 binary extension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Meta {
    pub datatype: DType,
    pub shape: Vec<usize>,
}

impl Meta {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.elements() * self.datatype.size().expect("objects hold numeric tensors")
    }
}

/// Who keeps an object alive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Owner {
    /// A client: until `DELETE`, or `ttl` after its last access.
    Client { ttl: Duration },
    /// The server's own intermediate: until the owner deletes it.
    Server,
}

/// An object's state as `GET /v2/objects/{ref}/meta` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectState {
    Pending,
    Ready,
    Spilled,
    Failed,
}

/// What the store answers about one object.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectInfo {
    pub object_ref: ObjectRef,
    pub state: ObjectState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datatype: Option<DType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found (never stored, deleted, or expired)")]
    NotFound(ObjectRef),
    #[error(
        "the object store cannot hold {need} more bytes: {reason} (object_store_memory is {capacity} bytes, {used} in use in memory)"
    )]
    Full {
        need: usize,
        capacity: usize,
        used: usize,
        reason: String,
    },
    #[error(
        "the object store holds its limit of {limit} objects (object_store.max_objects); delete objects or let them expire"
    )]
    TooMany { limit: usize },
    #[error("object {object_ref} was not ready within {timeout:?}")]
    Timeout { object_ref: ObjectRef, timeout: Duration },
    #[error("object {object_ref} has no value: the work that should produce it failed: {failure}")]
    Failed { object_ref: ObjectRef, failure: Failure },
    /// A bug: a store operation stopped (its thread panicked).
    #[error("the object store failed: {0}")]
    Internal(String),
}

enum State {
    Pending,
    Ready { data: Arc<Data>, meta: Arc<Meta> },
    Failed(Failure),
}

struct Entry {
    state: State,
    uses: Arc<Uses>,
    owner: Owner,
    /// Logical clock of the last access, for LRU.
    last_access: u64,
    expires: Option<Instant>,
    /// Turns `true` once the object is ready or failed.
    settled: watch::Sender<bool>,
    /// Order in which objects settled, for `wait`.
    settled_seq: u64,
    /// Its spill file is being written (outside the lock).
    spilling: bool,
}

impl Entry {
    fn in_memory(&self) -> Option<usize> {
        match &self.state {
            State::Ready { data, meta } if matches!(**data, Data::Memory(_)) => Some(meta.bytes()),
            _ => None,
        }
    }

    /// An access: LRU clock, and the time-to-live restarts. A pending object has none
    /// yet: it cannot expire while its work runs (its TTL starts when it settles).
    fn touch(&mut self, tick: u64, now: Instant) {
        self.last_access = tick;
        if let Owner::Client { ttl } = self.owner
            && !matches!(self.state, State::Pending)
        {
            self.expires = Some(now + ttl);
        }
    }
}

/// `values` as the little-endian bytes of `datatype`: the values themselves for FP32, an
/// encoded copy otherwise. `datatype` is numeric (checked where it was declared).
pub fn encoded(values: &[f32], datatype: DType) -> std::borrow::Cow<'_, [u8]> {
    if datatype == DType::F32 {
        return std::borrow::Cow::Borrowed(bytemuck::cast_slice(values));
    }
    let mut bytes = Vec::with_capacity(values.len() * datatype.size().expect("a numeric datatype"));
    datatype.encode_le(values, &mut bytes);
    std::borrow::Cow::Owned(bytes)
}

/// Everything under the store's lock: the objects and their byte accounts. Every change
/// of `used`, `spilled` or the object count is one of the methods below, which also set
/// the gauges that show them.
struct Inner {
    objects: HashMap<ObjectRef, Entry>,
    /// Bytes in memory, reservations for puts in flight included.
    used: usize,
    spilled: usize,
    tick: u64,
    settled_seq: u64,
    metrics: StoreMetrics,
}

impl Inner {
    /// A random ref that no object has.
    fn fresh_ref(&self) -> ObjectRef {
        loop {
            let r = ObjectRef::random();
            if !self.objects.contains_key(&r) {
                return r;
            }
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Takes `bytes` of memory (a reservation, or an object restored into memory).
    fn take(&mut self, bytes: usize) {
        self.used += bytes;
        self.metrics.memory_bytes.set(self.used as i64);
    }

    /// Gives back `bytes` of memory (a reservation unused, an object deleted).
    fn give_back(&mut self, bytes: usize) {
        self.used -= bytes;
        self.metrics.memory_bytes.set(self.used as i64);
    }

    /// `bytes` of an object moved from memory to its spill file.
    fn spilled_out(&mut self, bytes: usize) {
        self.give_back(bytes);
        self.spilled += bytes;
        self.metrics.spilled_bytes.set(self.spilled as i64);
    }

    /// `bytes` of spill file no longer counted (restored into memory, or deleted).
    fn spill_dropped(&mut self, bytes: usize) {
        self.spilled -= bytes;
        self.metrics.spilled_bytes.set(self.spilled as i64);
    }

    fn insert(&mut self, r: ObjectRef, entry: Entry) {
        self.objects.insert(r, entry);
        self.metrics.objects.set(self.objects.len() as i64);
    }

    /// Removes `r` and gives back what it counted; waiters wake up and find it gone.
    fn remove(&mut self, r: ObjectRef) -> Option<Entry> {
        let e = self.objects.remove(&r)?;
        if let State::Ready { data, meta } = &e.state {
            match **data {
                Data::Memory(_) => self.give_back(meta.bytes()),
                Data::Mapped(_, ref path) => {
                    self.spill_dropped(meta.bytes());
                    // The mapping stays valid after the unlink for leases that hold it.
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        e.settled.send_replace(true);
        self.metrics.objects.set(self.objects.len() as i64);
        Some(e)
    }

    /// A ready object of `buf`, owned by `owner`.
    fn ready_entry(&mut self, meta: Meta, buf: Buffer, owner: Owner) -> Entry {
        let tick = self.next_tick();
        self.settled_seq += 1;
        Entry {
            state: State::Ready {
                data: Arc::new(Data::Memory(buf)),
                meta: Arc::new(meta),
            },
            uses: Arc::new(Uses(AtomicUsize::new(0))),
            owner,
            last_access: tick,
            expires: match owner {
                Owner::Client { ttl } => Some(Instant::now() + ttl),
                Owner::Server => None,
            },
            settled: watch::Sender::new(true),
            settled_seq: self.settled_seq,
            spilling: false,
        }
    }
}

/// Where a cancel-safe put stands, between its blocking thread and its caller. Whichever
/// side comes second learns that the other is gone, and deletes the object.
#[derive(Debug, PartialEq)]
enum Handoff {
    Waiting,
    /// Stored, not yet taken by the caller.
    Stored(ObjectRef),
    /// The caller has its ref.
    Taken,
    /// The caller stopped waiting.
    Abandoned,
}

impl Handoff {
    fn lock(cell: &Mutex<Handoff>) -> MutexGuard<'_, Handoff> {
        cell.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The put's side, once `r` is stored: whether its caller still waits for it (if
    /// not, `r` is for the put to delete).
    fn stored(cell: &Mutex<Handoff>, r: ObjectRef) -> bool {
        let mut h = Handoff::lock(cell);
        if *h == Handoff::Abandoned {
            return false;
        }
        *h = Handoff::Stored(r);
        true
    }

    /// The caller's side, with its answer in hand.
    fn take(cell: &Mutex<Handoff>) {
        *Handoff::lock(cell) = Handoff::Taken;
    }

    /// The caller's side, when it stops waiting: the object it leaves behind, for the
    /// caller to delete.
    fn abandon(cell: &Mutex<Handoff>) -> Option<ObjectRef> {
        let mut h = Handoff::lock(cell);
        match std::mem::replace(&mut *h, Handoff::Abandoned) {
            Handoff::Stored(r) => Some(r),
            Handoff::Taken => {
                *h = Handoff::Taken;
                None
            }
            Handoff::Waiting | Handoff::Abandoned => None,
        }
    }
}

/// Abandons a put when its caller's future is dropped, deleting what it stored.
struct HandoffGuard {
    store: Arc<Store>,
    handoff: Arc<Mutex<Handoff>>,
}

impl Drop for HandoffGuard {
    fn drop(&mut self) {
        if let Some(r) = Handoff::abandon(&self.handoff) {
            self.store.delete(r);
        }
    }
}

/// How far the store grows beyond its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of spill files at once: a put that could only fit by spilling beyond it
    /// is refused (507), so the store never fills the disk.
    pub max_spill_bytes: usize,
    /// Most objects at once, pending ones included (each costs memory the byte counts
    /// do not show).
    pub max_objects: usize,
    /// Largest object a client may put (413 beyond it, before a byte is read).
    pub max_object_bytes: usize,
}

/// The object store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    capacity: usize,
    spill_dir: PathBuf,
    /// Whether the folder is the store's own (made up by the server, removed at the end).
    pub owns_spill_dir: bool,
    pub default_ttl: Duration,
    /// The bounds beyond the memory (`[object_store]`).
    pub limits: Limits,
    metrics: StoreMetrics,
    pinned: Option<PinnedAllocator>,
    /// Signalled after each round of spill swaps, for puts waiting on others' spills.
    spilled: std::sync::Condvar,
    /// Whether a failed pinned allocation was already logged.
    pinning_failed: std::sync::atomic::AtomicBool,
}

impl Store {
    /// A store of `capacity` bytes that spills under `spill_dir` (created when needed).
    pub fn new(capacity: usize, spill_dir: PathBuf, default_ttl: Duration, metrics: StoreMetrics) -> Self {
        Store {
            inner: Mutex::new(Inner {
                objects: HashMap::new(),
                used: 0,
                spilled: 0,
                tick: 0,
                settled_seq: 0,
                metrics: metrics.clone(),
            }),
            capacity,
            spill_dir,
            owns_spill_dir: false,
            default_ttl,
            limits: Limits {
                max_spill_bytes: usize::MAX,
                max_objects: usize::MAX,
                max_object_bytes: capacity,
            },
            metrics,
            pinned: None,
            spilled: std::sync::Condvar::new(),
            pinning_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A client's object living the store's default time-to-live.
    pub fn client_owner(&self) -> Owner {
        Owner::Client { ttl: self.default_ttl }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every update is a
        // single assignment after the fallible work), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `buf` as a ready object. `reservation` must have taken `buf.len()` bytes.
    pub fn commit(&self, reservation: Reservation, meta: Meta, buf: Buffer, owner: Owner) -> ObjectRef {
        assert_eq!(
            reservation.bytes(),
            buf.len(),
            "reservation and buffer disagree. This is a bug."
        );
        assert_eq!(meta.bytes(), buf.len(), "meta and buffer disagree. This is a bug.");
        let mut g = self.lock();
        let r = g.fresh_ref();
        reservation.keep();
        let entry = g.ready_entry(meta, buf, owner);
        g.insert(r, entry);
        r
    }

    /// Refuses a new object when the store already holds `max_objects`.
    pub fn room_for_one_more(&self) -> Result<(), StoreError> {
        if self.lock().objects.len() >= self.limits.max_objects {
            self.metrics.put_failures.inc();
            return Err(StoreError::TooMany {
                limit: self.limits.max_objects,
            });
        }
        Ok(())
    }

    /// Copies `bytes` into a new ready object. Blocking: making room may spill.
    pub fn put(self: &Arc<Self>, meta: Meta, bytes: &[u8], owner: Owner) -> Result<ObjectRef, StoreError> {
        self.room_for_one_more()?;
        let (reservation, buf) = self.copy_in(bytes)?;
        Ok(self.commit(reservation, meta, buf, owner))
    }

    /// [`Store::put`] from async code, on a blocking thread. Cancel-safe: an object
    /// stored after the caller stopped waiting is deleted (nobody else knows its ref).
    pub async fn put_async(
        self: &Arc<Self>,
        meta: Meta,
        bytes: impl AsRef<[u8]> + Send + 'static,
        owner: Owner,
    ) -> Result<ObjectRef, StoreError> {
        self.put_blocking(move |store| store.put(meta, bytes.as_ref(), owner))
            .await
    }

    /// `y` as a new ready object of `datatype` (a model's answer kept for the client),
    /// as [`Store::put_async`] stores it. FP32 values are copied once, straight into the
    /// store.
    pub async fn put_array(
        self: &Arc<Self>,
        y: ndarray::ArrayD<f32>,
        datatype: DType,
        owner: Owner,
    ) -> Result<ObjectRef, StoreError> {
        self.put_blocking(move |store| {
            let y = y.as_standard_layout();
            let meta = Meta {
                datatype,
                shape: y.shape().to_vec(),
            };
            store.put(meta, &encoded(y.as_slice().expect("standard layout"), datatype), owner)
        })
        .await
    }

    /// Runs `put` on a blocking thread and hands its ref over; if the waiting future is
    /// dropped first (a deadline, a client gone), whichever side comes second deletes the
    /// object, so nothing is left that nobody can name.
    async fn put_blocking(
        self: &Arc<Self>,
        put: impl FnOnce(&Arc<Store>) -> Result<ObjectRef, StoreError> + Send + 'static,
    ) -> Result<ObjectRef, StoreError> {
        let handoff = Arc::new(Mutex::new(Handoff::Waiting));
        let guard = HandoffGuard {
            store: Arc::clone(self),
            handoff: Arc::clone(&handoff),
        };
        let store = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || {
            let result = put(&store);
            if let Ok(r) = &result
                && !Handoff::stored(&handoff, *r)
            {
                store.delete(*r);
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Internal(format!("a put stopped: {e}"))));
        Handoff::take(&guard.handoff);
        result
    }

    /// Room for `bytes` and a buffer holding a copy of them, not yet an object.
    fn copy_in(self: &Arc<Self>, bytes: &[u8]) -> Result<(Reservation, Buffer), StoreError> {
        let reservation = self.reserve(bytes.len())?;
        let mut buf = self.allocate(bytes.len())?;
        buf.copy_from_slice(bytes);
        Ok((reservation, buf))
    }

    /// Memory for an object of `bytes` (after [`Store::reserve`]): page-locked when the
    /// store has a GPU's allocator, heap memory otherwise or when pinning fails.
    pub fn allocate(&self, bytes: usize) -> Result<Buffer, StoreError> {
        if let Some(pinned) = &self.pinned {
            match pinned.zeroed(bytes) {
                Ok(b) => return Ok(Buffer::Pinned(b)),
                Err(e) => {
                    if !self.pinning_failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "page-locked memory unavailable; objects use heap memory");
                    }
                }
            }
        }
        AlignedBuf::zeroed(bytes)
            .map(Buffer::Heap)
            .ok_or_else(|| StoreError::Full {
                need: bytes,
                capacity: self.capacity,
                used: self.lock().used,
                reason: "the machine could not allocate the memory".into(),
            })
    }

    /// Keeps objects in page-locked memory from now on (a GPU is present).
    pub fn use_pinned_memory(&mut self, allocator: PinnedAllocator) {
        self.pinned = Some(allocator);
    }

    /// What the store knows of `r`; counts as an access.
    pub fn info(&self, r: ObjectRef) -> Result<ObjectInfo, StoreError> {
        let mut g = self.lock();
        let tick = g.next_tick();
        let e = g.objects.get_mut(&r).ok_or(StoreError::NotFound(r))?;
        e.touch(tick, Instant::now());
        let mut info = ObjectInfo {
            object_ref: r,
            state: ObjectState::Pending,
            datatype: None,
            shape: None,
            bytes: None,
            error: None,
        };
        match &e.state {
            State::Pending => {}
            State::Failed(f) => {
                info.state = ObjectState::Failed;
                info.error = Some(f.clone());
            }
            State::Ready { data, meta } => {
                info.state = match **data {
                    Data::Memory(_) => ObjectState::Ready,
                    Data::Mapped(..) => ObjectState::Spilled,
                };
                info.datatype = Some(meta.datatype);
                info.shape = Some(meta.shape.clone());
                info.bytes = Some(meta.bytes());
            }
        }
        Ok(info)
    }

    /// Forgets `r`. Leases already taken keep its bytes until they end. Returns whether
    /// it existed.
    pub fn delete(&self, r: ObjectRef) -> bool {
        let removed = self.lock().remove(r);
        // The entry (and maybe its last reference to the bytes) drops outside the lock.
        removed.is_some()
    }

    /// Deletes the client objects whose time-to-live has passed and that nothing uses;
    /// returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut g = self.lock();
        let expired: Vec<ObjectRef> = g
            .objects
            .iter()
            .filter(|(_, e)| {
                !matches!(e.state, State::Pending)
                    && e.expires.is_some_and(|t| t <= now)
                    && e.uses.0.load(Ordering::Acquire) == 0
            })
            .map(|(r, _)| *r)
            .collect();
        let removed: Vec<Entry> = expired.iter().filter_map(|r| g.remove(*r)).collect();
        drop(g);
        if !removed.is_empty() {
            tracing::debug!(count = removed.len(), "objects expired");
        }
        removed.len()
    }

    /// Objects, bytes in memory, bytes spilled.
    pub fn usage(&self) -> (usize, usize, usize) {
        let g = self.lock();
        (g.objects.len(), g.used, g.spilled)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.remove_spill_files();
    }
}
