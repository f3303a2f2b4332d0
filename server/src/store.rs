//! The object store: immutable tensors addressed by random 128-bit [`ObjectRef`]s.
//!
//! * Capacity is `object_store_memory` bytes of 64-byte-aligned heap memory. When a put
//!   needs room, the least recently used objects that nothing is using are written to
//!   files under `spill_dir` and memory-mapped from there; an access brings a spilled
//!   object back into memory when room can be made (and reads it from the mapping when
//!   not).
//! * An object in use (a [`Lease`]: a queued request, a running task, a response being
//!   sent) is never spilled, and its bytes outlive a `DELETE`: the lease keeps them.
//! * Objects handed to clients expire `ttl` after their last access; the server's own
//!   intermediates ([`Owner::Server`]) live until their owner deletes them.
//! * An object may be created pending (the result of async work) and later fulfilled or
//!   failed; [`Store::get`] and [`Store::wait`] block on that, like `ray.get` and
//!   `ray.wait`.
//!
//! When even spilling cannot make room, a put fails with [`StoreError::Full`] and nothing
//! already stored is touched.

use std::alloc::Layout;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prism_kernels::cuda::{PinnedAllocator, PinnedBytes};
use prism_protocol::DType;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

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

/// Heap memory aligned to 64 bytes (a cache line, and enough for any element type and
/// SIMD loads), zero-initialised by the allocator.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

const ALIGN: usize = 64;

// SAFETY: `AlignedBuf` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes, or `None` when the allocator refuses (no abort).
    pub fn zeroed(len: usize) -> Option<Self> {
        if len == 0 {
            return Some(AlignedBuf {
                ptr: NonNull::new(ALIGN as *mut u8).expect("non-zero"),
                len: 0,
            });
        }
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| AlignedBuf { ptr, len })
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed) bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            let layout = Layout::from_size_align(self.len, ALIGN).expect("made from this layout");
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// An object's memory: page-locked when a GPU is present (so copies from it to a card can
/// be direct DMA), aligned heap memory otherwise.
pub enum Buffer {
    Heap(AlignedBuf),
    Pinned(PinnedBytes),
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buffer::Heap(b) => b,
            Buffer::Pinned(b) => b,
        }
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Buffer::Heap(b) => b,
            Buffer::Pinned(b) => b,
        }
    }
}

/// Where an object's bytes are.
enum Data {
    Memory(Buffer),
    /// A spill file, mapped read-only, and its path.
    Mapped(memmap2::Mmap, PathBuf),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Memory(b) => b,
            Data::Mapped(m, _) => m,
        }
    }
}

/// A read handle on a ready object. While it lives the object is not spilled, and its
/// bytes stay valid even if the object is deleted.
pub struct Lease {
    pub object_ref: ObjectRef,
    pub meta: Arc<Meta>,
    data: Arc<Data>,
    uses: Arc<Uses>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("object_ref", &self.object_ref)
            .field("meta", &self.meta)
            .finish()
    }
}

/// How many leases an object has.
struct Uses(AtomicUsize);

impl Lease {
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The elements as `f32`: borrowed for FP32 objects, converted otherwise.
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        if self.meta.datatype == DType::F32
            && let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(self.bytes())
        {
            return std::borrow::Cow::Borrowed(v);
        }
        let mut out = Vec::with_capacity(self.meta.elements());
        self.meta.datatype.decode_le(self.bytes(), &mut out);
        std::borrow::Cow::Owned(out)
    }
}

impl Clone for Lease {
    /// Another use of the same object.
    fn clone(&self) -> Self {
        self.uses.0.fetch_add(1, Ordering::AcqRel);
        Lease {
            object_ref: self.object_ref,
            meta: Arc::clone(&self.meta),
            data: Arc::clone(&self.data),
            uses: Arc::clone(&self.uses),
        }
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.uses.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the work that should have produced an object failed. Kept in the store: every
/// `get` of the object answers it.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// `InjectedFault`, `ShapeError`, `ModelError`, `Panic`, `Timeout`, `StoreFull`, ...
    pub kind: String,
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
                kind: "ObjectLost".into(),
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
                kind: "Lost".into(),
                message: format!("{} stopped before producing this object", self.producer),
                attempts: 0,
            },
        );
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

#[derive(Debug, thiserror::Error)]
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
    #[error("object {object_ref} was not ready within {timeout:?}")]
    Timeout { object_ref: ObjectRef, timeout: Duration },
    #[error("object {object_ref} has no value: the work that should produce it failed: {failure}")]
    Failed { object_ref: ObjectRef, failure: Failure },
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

/// The store's gauges and counters (registered by [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct StoreMetrics {
    pub objects: IntGauge,
    pub memory_bytes: IntGauge,
    pub spilled_bytes: IntGauge,
    pub spills: IntCounter,
    pub restores: IntCounter,
    pub put_failures: IntCounter,
}

struct Inner {
    objects: HashMap<ObjectRef, Entry>,
    /// Bytes in memory, reservations for puts in flight included.
    used: usize,
    spilled: usize,
    tick: u64,
    settled_seq: u64,
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
}

/// The object store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    capacity: usize,
    spill_dir: PathBuf,
    /// Whether the folder is the store's own (made up by the server, removed at the end).
    pub owns_spill_dir: bool,
    pub default_ttl: Duration,
    metrics: StoreMetrics,
    pinned: Option<PinnedAllocator>,
    /// Signalled after each round of spill swaps, for puts waiting on others' spills.
    spilled: std::sync::Condvar,
    /// Whether a failed pinned allocation was already logged.
    pinning_failed: std::sync::atomic::AtomicBool,
}

/// Room taken for a put in flight; given back if the put does not complete.
pub struct Reservation {
    store: Arc<Store>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut g = self.store.lock();
            g.used -= self.bytes;
            self.store.set_gauges(&g);
        }
    }
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
            }),
            capacity,
            spill_dir,
            owns_spill_dir: false,
            default_ttl,
            metrics,
            pinned: None,
            spilled: std::sync::Condvar::new(),
            pinning_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every update is a
        // single assignment after the fallible work), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_gauges(&self) {
        self.set_gauges(&self.lock());
    }

    /// The gauges from `g`, set by whoever already holds the lock.
    fn set_gauges(&self, g: &Inner) {
        self.metrics.objects.set(g.objects.len() as i64);
        self.metrics.memory_bytes.set(g.used as i64);
        self.metrics.spilled_bytes.set(g.spilled as i64);
    }

    /// Makes room for `bytes` (spilling what it must) and takes it. Blocking: spilling
    /// writes files, which happens outside the store's lock.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, StoreError> {
        let result = self.take_room(bytes);
        if let Err(e) = result {
            self.metrics.put_failures.inc();
            return Err(e);
        }
        Ok(Reservation {
            store: Arc::clone(self),
            bytes,
        })
    }

    /// Takes `bytes` of room, spilling least-recently-used objects that nothing uses
    /// until they fit. Victims are chosen and marked under the lock, written out without
    /// it, and swapped for their mapping under it again, if nobody took them meanwhile.
    fn take_room(&self, bytes: usize) -> Result<(), StoreError> {
        // A round spills, and the next one takes the room, unless another put took it
        // first or a victim was leased while its file was written. Rounds that free
        // nothing are bounded, so a store whose objects keep being used answers Full.
        let mut idle_rounds = 0;
        loop {
            let mut g = self.lock();
            let full = |g: &Inner, reason: String| StoreError::Full {
                need: bytes,
                capacity: self.capacity,
                used: g.used,
                reason,
            };
            if bytes > self.capacity {
                return Err(full(&g, "the object is larger than the whole store".into()));
            }
            if g.used + bytes <= self.capacity {
                g.used += bytes;
                self.set_gauges(&g);
                return Ok(());
            }
            let mut candidates: Vec<(u64, ObjectRef, usize)> = g
                .objects
                .iter()
                .filter(|(_, e)| !e.spilling && e.uses.0.load(Ordering::Acquire) == 0)
                .filter_map(|(r, e)| Some((e.last_access, *r, e.in_memory()?)))
                .collect();
            // Room other threads are freeing is theirs to take, but it may come back to
            // this one if they fail: it counts for "could this ever fit", not as freed.
            let being_spilled: usize = g
                .objects
                .values()
                .filter(|e| e.spilling)
                .filter_map(Entry::in_memory)
                .sum();
            let spillable: usize = candidates.iter().map(|c| c.2).sum::<usize>() + being_spilled;
            if g.used + bytes > self.capacity + spillable {
                return Err(full(
                    &g,
                    format!("even spilling every object not in use ({spillable} bytes) would not free enough"),
                ));
            }
            if idle_rounds >= 64 {
                return Err(full(&g, "the objects chosen to spill kept being used; retry".into()));
            }
            candidates.sort_unstable();
            let mut freed = 0;
            let mut victims = Vec::new();
            for (_, r, size) in candidates {
                if g.used + bytes <= self.capacity + freed {
                    break;
                }
                let e = g.objects.get_mut(&r).expect("listed above");
                e.spilling = true;
                let State::Ready { data, .. } = &e.state else {
                    unreachable!("in memory means ready")
                };
                victims.push((r, Arc::clone(data)));
                freed += size;
            }
            if victims.is_empty() {
                // Only other threads' spills could make room: wait for one to finish.
                idle_rounds += 1;
                let _ = self
                    .spilled
                    .wait_timeout(g, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            g.tick += 1;
            let round = g.tick;
            drop(g);

            // The files are written without the lock. A panic here must not leave the
            // victims marked forever: it is caught and becomes an I/O error.
            let written: Vec<_> = victims
                .into_iter()
                .map(|(r, data)| {
                    let path = self.spill_dir.join(format!("{r}-{round}.obj"));
                    let mapped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_spill_file(&self.spill_dir, &path, data.bytes())
                    }))
                    .unwrap_or_else(|_| Err(std::io::Error::other("writing the spill file panicked")));
                    (r, data, path, mapped)
                })
                .collect();
            let mut g = self.lock();
            let mut failure = None;
            let mut swapped = 0;
            // Memory freed by the swaps is released after the lock (a GiB of page-locked
            // memory takes a while to free).
            let mut released = Vec::new();
            for (r, data, path, mapped) in written {
                let entry = g.objects.get_mut(&r);
                let unchanged = entry.as_ref().is_some_and(|e| {
                    e.uses.0.load(Ordering::Acquire) == 0
                        && matches!(&e.state, State::Ready { data: d, .. } if Arc::ptr_eq(d, &data))
                });
                if let Some(e) = entry {
                    e.spilling = false;
                }
                match mapped {
                    Ok(mapped) if unchanged => {
                        let e = g.objects.get_mut(&r).expect("checked above");
                        let State::Ready { meta, .. } = &e.state else {
                            unreachable!()
                        };
                        let meta = Arc::clone(meta);
                        e.state = State::Ready {
                            data: Arc::new(Data::Mapped(mapped, path)),
                            meta: Arc::clone(&meta),
                        };
                        g.used -= meta.bytes();
                        g.spilled += meta.bytes();
                        swapped += 1;
                        self.metrics.spills.inc();
                        tracing::debug!(object = %r, bytes = meta.bytes(), "spilled");
                    }
                    Ok(_) => {
                        // Deleted or leased while its file was written: keep it as it is.
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => failure = Some(e),
                }
                released.push(data);
            }
            self.spilled.notify_all();
            if let Some(e) = failure {
                let err = full(&g, format!("spilling to {} failed: {e}", self.spill_dir.display()));
                drop(g);
                return Err(err);
            }
            if swapped == 0 {
                idle_rounds += 1;
            }
            drop(g);
            drop(released);
        }
    }

    /// Stores `buf` as a ready object. `reservation` must have taken `buf.len()` bytes.
    pub fn commit(&self, reservation: Reservation, meta: Meta, buf: Buffer, owner: Owner) -> ObjectRef {
        assert_eq!(
            reservation.bytes,
            buf.len(),
            "reservation and buffer disagree. This is a bug."
        );
        assert_eq!(meta.bytes(), buf.len(), "meta and buffer disagree. This is a bug.");
        let mut g = self.lock();
        let r = g.fresh_ref();
        std::mem::forget(reservation);
        let entry = self.ready_entry(&mut g, meta, buf, owner);
        g.objects.insert(r, entry);
        self.set_gauges(&g);
        drop(g);
        r
    }

    fn ready_entry(&self, g: &mut Inner, meta: Meta, buf: Buffer, owner: Owner) -> Entry {
        g.tick += 1;
        g.settled_seq += 1;
        let now = Instant::now();
        Entry {
            state: State::Ready {
                data: Arc::new(Data::Memory(buf)),
                meta: Arc::new(meta),
            },
            uses: Arc::new(Uses(AtomicUsize::new(0))),
            owner,
            last_access: g.tick,
            expires: match owner {
                Owner::Client { ttl } => Some(now + ttl),
                Owner::Server => None,
            },
            settled: watch::Sender::new(true),
            settled_seq: g.settled_seq,
            spilling: false,
        }
    }

    /// Copies `bytes` into a new ready object.
    pub fn put(self: &Arc<Self>, meta: Meta, bytes: &[u8], owner: Owner) -> Result<ObjectRef, StoreError> {
        let (reservation, buf) = self.copy_in(bytes)?;
        Ok(self.commit(reservation, meta, buf, owner))
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

    /// A pending object, to be fulfilled or failed by the work that produces it.
    pub fn create_pending(&self, owner: Owner) -> ObjectRef {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let r = g.fresh_ref();
        g.objects.insert(
            r,
            Entry {
                state: State::Pending,
                uses: Arc::new(Uses(AtomicUsize::new(0))),
                owner,
                last_access: tick,
                expires: None,
                settled: watch::Sender::new(false),
                settled_seq: 0,
                spilling: false,
            },
        );
        self.set_gauges(&g);
        drop(g);
        r
    }

    /// Gives a pending object its value. If the object was deleted meanwhile the value is
    /// dropped; if the store cannot hold it, the object fails with `StoreFull`.
    pub fn fulfil(self: &Arc<Self>, r: ObjectRef, meta: Meta, bytes: &[u8]) {
        if !self.is_pending(r) {
            return;
        }
        match self.copy_in(bytes) {
            Ok((reservation, buf)) => {
                let mut g = self.lock();
                if !g.objects.get(&r).is_some_and(|e| matches!(e.state, State::Pending)) {
                    // Deleted (or settled) while the bytes were copied; the reservation
                    // gives its room back.
                    drop(g);
                    return;
                }
                let old = g.objects.remove(&r).expect("checked above");
                std::mem::forget(reservation);
                let mut entry = self.ready_entry(&mut g, meta, buf, old.owner);
                entry.settled = old.settled;
                entry.uses = old.uses;
                entry.settled.send_replace(true);
                g.objects.insert(r, entry);
                self.set_gauges(&g);
                drop(g);
            }
            Err(e) => self.fail(
                r,
                Failure {
                    kind: "StoreFull".into(),
                    message: e.to_string(),
                    attempts: 1,
                },
            ),
        }
    }

    fn is_pending(&self, r: ObjectRef) -> bool {
        self.lock()
            .objects
            .get(&r)
            .is_some_and(|e| matches!(e.state, State::Pending))
    }

    /// Fulfils `r` with `y` stored as `datatype` (the answer of a model or a task). FP32
    /// values are copied once, straight into the store; other datatypes are encoded first.
    pub async fn fulfil_array(self: &Arc<Self>, r: ObjectRef, y: ndarray::ArrayD<f32>, datatype: DType) {
        let store = Arc::clone(self);
        // If the blocking task dies, the object stays pending until its `Settles` guard
        // fails it.
        let _ = tokio::task::spawn_blocking(move || {
            let y = y.as_standard_layout();
            let meta = Meta {
                datatype,
                shape: y.shape().to_vec(),
            };
            store.fulfil(r, meta, &encoded(y.as_slice().expect("standard layout"), datatype));
        })
        .await;
    }

    /// Settles a pending object as failed; an object already settled (or deleted) is
    /// left as it is.
    pub fn fail(&self, r: ObjectRef, failure: Failure) {
        let mut g = self.lock();
        g.settled_seq += 1;
        let seq = g.settled_seq;
        g.tick += 1;
        let tick = g.tick;
        if let Some(e) = g.objects.get_mut(&r)
            && matches!(e.state, State::Pending)
        {
            e.state = State::Failed(failure);
            e.settled_seq = seq;
            e.touch(tick, Instant::now());
            e.settled.send_replace(true);
        }
    }

    /// A lease on a ready object, now (a spilled one reads its mapping; see
    /// [`Store::restore`]).
    pub fn lease(&self, r: ObjectRef) -> Result<Option<Lease>, StoreError> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let e = g.objects.get_mut(&r).ok_or(StoreError::NotFound(r))?;
        e.touch(tick, Instant::now());
        let (data, meta) = match &e.state {
            State::Pending => return Ok(None),
            State::Failed(f) => {
                return Err(StoreError::Failed {
                    object_ref: r,
                    failure: f.clone(),
                });
            }
            State::Ready { data, meta } => (Arc::clone(data), Arc::clone(meta)),
        };
        let uses = Arc::clone(&e.uses);
        // Counted before the lock is released, so no spill can pick it from here on.
        uses.0.fetch_add(1, Ordering::AcqRel);
        let lease = Lease {
            object_ref: r,
            meta,
            data,
            uses,
        };
        Ok(Some(lease))
    }

    /// Whether the lease reads a spill file.
    pub fn is_spilled(lease: &Lease) -> bool {
        matches!(*lease.data, Data::Mapped(..))
    }

    /// Brings the object of a lease on a spilled object back into memory when room can
    /// be made (spilling others if it must); otherwise, or if the object changed
    /// meanwhile, the lease keeps reading the mapping. Blocking: copies and may write
    /// files, outside the lock.
    pub fn restore(self: &Arc<Self>, lease: Lease) -> Lease {
        if !Self::is_spilled(&lease) {
            return lease;
        }
        let current = |g: &Inner| {
            g.objects
                .get(&lease.object_ref)
                .is_some_and(|e| matches!(&e.state, State::Ready { data: d, .. } if Arc::ptr_eq(d, &lease.data)))
        };
        // Nothing is spilled to make room for an object deleted (or restored) meanwhile.
        if !current(&self.lock()) {
            return lease;
        }
        let bytes = lease.meta.bytes();
        let Ok(reservation) = self.take_room(bytes).map(|()| Reservation {
            store: Arc::clone(self),
            bytes,
        }) else {
            return lease;
        };
        let Ok(mut buf) = self.allocate(bytes) else {
            return lease;
        };
        buf.copy_from_slice(lease.bytes());
        let data = Arc::new(Data::Memory(buf));
        let mut g = self.lock();
        if !current(&g) {
            drop(g);
            return lease; // changed meanwhile; the reservation gives its room back
        }
        let e = g.objects.get_mut(&lease.object_ref).expect("checked above");
        e.state = State::Ready {
            data: Arc::clone(&data),
            meta: Arc::clone(&lease.meta),
        };
        std::mem::forget(reservation);
        g.spilled -= bytes;
        self.set_gauges(&g);
        drop(g);
        if let Data::Mapped(_, path) = &*lease.data {
            let _ = std::fs::remove_file(path);
        }
        self.metrics.restores.inc();
        Lease {
            object_ref: lease.object_ref,
            meta: Arc::clone(&lease.meta),
            data,
            uses: Arc::clone(&lease.uses),
        }
        // The old lease drops here and gives back its use; the new one holds its own.
        .with_use()
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
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(_) => {}
                Err(_) => {
                    return Err(StoreError::Timeout {
                        object_ref: r,
                        timeout: t,
                    });
                }
            },
            None => {
                let _ = wait.await;
            }
        }
        // Settled, or deleted (its sender dropped): `lease` tells which.
        let lease = self.lease(r)?.ok_or(StoreError::NotFound(r))?;
        if !Self::is_spilled(&lease) {
            return Ok(lease);
        }
        let store = Arc::clone(self);
        let held = lease.clone();
        Ok(tokio::task::spawn_blocking(move || store.restore(held))
            .await
            .unwrap_or(lease))
    }

    /// What the store knows of `r`; counts as an access.
    pub fn info(&self, r: ObjectRef) -> Result<ObjectInfo, StoreError> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
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
        let mut g = self.lock();
        let Some(e) = g.objects.remove(&r) else {
            return false;
        };
        self.forget(&mut g, &e);
        self.set_gauges(&g);
        drop(g);
        true
    }

    fn forget(&self, g: &mut Inner, e: &Entry) {
        if let State::Ready { data, meta } = &e.state {
            match **data {
                Data::Memory(_) => g.used -= meta.bytes(),
                Data::Mapped(_, ref path) => {
                    g.spilled -= meta.bytes();
                    // The mapping stays valid after the unlink for leases that hold it.
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        // Waiters wake up and find it gone.
        e.settled.send_replace(true);
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
        let mut removed = Vec::with_capacity(expired.len());
        for r in &expired {
            let e = g.objects.remove(r).expect("listed above");
            self.forget(&mut g, &e);
            removed.push(e);
        }
        drop(g);
        drop(removed);
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "objects expired");
            self.update_gauges();
        }
        expired.len()
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
        let not_ready = refs.iter().filter(|r| !ready.contains(r)).copied().collect();
        Ok((ready, not_ready))
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

impl Store {
    /// Spill files belong to this store alone: they go when the server stops (mappings
    /// already open stay readable).
    pub fn remove_spill_files(&self) {
        let g = self.lock();
        for e in g.objects.values() {
            if let State::Ready { data, .. } = &e.state
                && let Data::Mapped(_, path) = &**data
            {
                let _ = std::fs::remove_file(path);
            }
        }
        drop(g);
        if self.owns_spill_dir {
            let _ = std::fs::remove_dir(&self.spill_dir);
        }
    }
}

impl Lease {
    fn with_use(self) -> Lease {
        self.uses.0.fetch_add(1, Ordering::AcqRel);
        self
    }
}

/// Writes `bytes` to a new file at `path` and maps it; removes what it wrote on failure.
fn write_spill_file(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<memmap2::Mmap> {
    let write = || -> std::io::Result<memmap2::Mmap> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create_new(path)?;
        f.write_all(bytes)?;
        map_file(path)
    };
    write().inspect_err(|e| {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(path);
        }
    })
}

fn map_file(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: spill files are written by this process under its own spill directory and
    // never modified after they are mapped; they are unlinked only when no longer read
    // through the store (a mapping outlives the unlink).
    unsafe { memmap2::Mmap::map(&f) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> StoreMetrics {
        StoreMetrics {
            objects: IntGauge::new("o", "o").unwrap(),
            memory_bytes: IntGauge::new("m", "m").unwrap(),
            spilled_bytes: IntGauge::new("s", "s").unwrap(),
            spills: IntCounter::new("sp", "sp").unwrap(),
            restores: IntCounter::new("r", "r").unwrap(),
            put_failures: IntCounter::new("f", "f").unwrap(),
        }
    }

    fn store(capacity: usize, dir: &Path) -> Arc<Store> {
        Arc::new(Store::new(capacity, dir.to_owned(), Duration::from_secs(60), metrics()))
    }

    fn meta(n: usize) -> Meta {
        Meta {
            datatype: DType::U8,
            shape: vec![n],
        }
    }

    const CLIENT: Owner = Owner::Client {
        ttl: Duration::from_secs(60),
    };

    #[test]
    fn refs_are_32_hex_digits_and_round_trip() {
        let r = ObjectRef::random();
        let s = r.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<ObjectRef>().unwrap(), r);
        assert!("xyz".parse::<ObjectRef>().is_err());
        assert!("0123456789abcdef0123456789abcdeg".parse::<ObjectRef>().is_err());
        assert_ne!(ObjectRef::random(), ObjectRef::random());
    }

    #[test]
    fn spills_the_least_recently_used_object_not_in_use_and_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(250, dir.path());
        let a = s.put(meta(100), &[1; 100], CLIENT).unwrap();
        let b = s.put(meta(100), &[2; 100], CLIENT).unwrap();
        let held = s.lease(a).unwrap().unwrap(); // `a` is older, but in use
        let c = s.put(meta(100), &[3; 100], CLIENT).unwrap();
        assert_eq!(s.info(b).unwrap().state, ObjectState::Spilled);
        assert_eq!(s.info(a).unwrap().state, ObjectState::Ready);
        assert_eq!(s.usage(), (3, 200, 100));
        drop(held);
        // A lease reads the mapping; restoring brings `b` back, spilling the least
        // recently used of a and c.
        let mapped = s.lease(b).unwrap().unwrap();
        assert!(Store::is_spilled(&mapped));
        assert_eq!(mapped.bytes(), &[2; 100][..]);
        let lb = s.restore(mapped);
        assert!(!Store::is_spilled(&lb));
        assert_eq!(lb.bytes(), &[2; 100][..]);
        assert_eq!(s.info(b).unwrap().state, ObjectState::Ready);
        assert_eq!(s.usage(), (3, 200, 100));
        for (r, v) in [(a, 1), (c, 3)] {
            assert_eq!(s.lease(r).unwrap().unwrap().bytes(), &[v; 100][..]);
        }
        drop(lb);
        // Restoring an object deleted meanwhile changes nothing.
        let spilled = [a, c]
            .into_iter()
            .find(|r| s.info(*r).unwrap().state == ObjectState::Spilled)
            .unwrap();
        let l = s.lease(spilled).unwrap().unwrap();
        assert!(s.delete(spilled));
        let l = s.restore(l);
        assert!(Store::is_spilled(&l));
        assert_eq!(s.usage(), (2, 200, 0));
    }

    #[test]
    fn a_put_that_cannot_fit_fails_and_harms_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(150, dir.path());
        let a = s.put(meta(100), &[7; 100], CLIENT).unwrap();
        let _held = s.lease(a).unwrap().unwrap();
        let err = s.put(meta(100), &[8; 100], CLIENT).unwrap_err();
        assert!(err.to_string().contains("not in use"), "{err}");
        assert!(matches!(
            s.put(meta(200), &[0; 200], CLIENT),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(s.usage(), (1, 100, 0));
        assert_eq!(s.lease(a).unwrap().unwrap().bytes(), &[7; 100][..]);
    }

    #[test]
    fn spill_failure_leaves_the_object_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"file").unwrap();
        let s = store(150, &blocker);
        let a = s.put(meta(100), &[5; 100], CLIENT).unwrap();
        let err = s.put(meta(100), &[6; 100], CLIENT).unwrap_err();
        assert!(err.to_string().contains("spilling to"), "{err}");
        assert_eq!(s.info(a).unwrap().state, ObjectState::Ready);
        assert_eq!(s.usage(), (1, 100, 0));
    }

    #[test]
    fn a_lease_outlives_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(1000, dir.path());
        let a = s.put(meta(3), &[1, 2, 3], CLIENT).unwrap();
        let l = s.lease(a).unwrap().unwrap();
        assert!(s.delete(a));
        assert!(!s.delete(a));
        assert!(matches!(s.lease(a), Err(StoreError::NotFound(_))));
        assert_eq!(l.bytes(), &[1, 2, 3]);
        assert_eq!(s.usage(), (0, 0, 0));
    }

    #[tokio::test]
    async fn get_and_wait_block_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(1000, dir.path());
        let p1 = s.create_pending(CLIENT);
        let p2 = s.create_pending(CLIENT);
        let r = s.put(meta(1), &[9], CLIENT).unwrap();
        let err = s.get(p1, Some(Duration::from_millis(20))).await.unwrap_err();
        assert!(matches!(err, StoreError::Timeout { .. }));
        let (ready, not_ready) = s.wait(&[p1, p2, r], 1, Some(Duration::from_millis(10))).await.unwrap();
        assert_eq!((ready, not_ready), (vec![r], vec![p1, p2]));

        let s2 = Arc::clone(&s);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s2.fulfil(p2, meta(2), &[4, 5]);
            tokio::time::sleep(Duration::from_millis(20)).await;
            s2.fail(
                p1,
                Failure {
                    kind: "InjectedFault".into(),
                    message: "boom".into(),
                    attempts: 2,
                },
            );
        });
        let (ready, not_ready) = s.wait(&[p1, p2, r], 3, None).await.unwrap();
        assert_eq!(ready, vec![r, p2, p1]);
        assert!(not_ready.is_empty());
        assert_eq!(s.get(p2, None).await.unwrap().bytes(), &[4, 5]);
        let err = s.get(p1, None).await.unwrap_err().to_string();
        assert!(err.contains("InjectedFault: boom (after 2 attempts)"), "{err}");
    }

    #[tokio::test]
    async fn client_objects_expire_unless_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(1000, dir.path());
        let short = Owner::Client {
            ttl: Duration::from_millis(1),
        };
        let a = s.put(meta(1), &[1], short).unwrap();
        let b = s.put(meta(1), &[2], short).unwrap();
        let server = s.put(meta(1), &[3], Owner::Server).unwrap();
        let held = s.lease(b).unwrap().unwrap();
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(s.expire(later), 1);
        assert!(s.info(a).is_err());
        assert!(s.info(b).is_ok() && s.info(server).is_ok());
        drop(held);
        assert_eq!(s.expire(Instant::now() + Duration::from_secs(1)), 1);
        assert!(s.info(server).is_ok());

        // A pending object does not expire while its work runs, however often it is
        // looked at; its time-to-live starts when it settles.
        let pending = s.create_pending(short);
        s.info(pending).unwrap();
        assert_eq!(s.expire(Instant::now() + Duration::from_secs(1)), 0);
        s.fulfil(pending, meta(1), &[4]);
        assert_eq!(s.expire(Instant::now() + Duration::from_secs(1)), 1);
    }

    /// Four threads put, read, restore and delete at once on a store that must spill;
    /// afterwards the byte counts match the objects and every object reads back intact.
    #[test]
    fn concurrent_puts_reads_and_deletes_keep_the_accounts_right() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(4096, dir.path());
        let stored = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let s = Arc::clone(&s);
                let stored = Arc::clone(&stored);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..200u32 {
                        let v = t.wrapping_mul(64).wrapping_add(i as u8);
                        let size = 100 + (i as usize * 37) % 900;
                        if let Ok(r) = s.put(meta(size), &vec![v; size], CLIENT) {
                            stored.fetch_add(1, Ordering::Relaxed);
                            mine.push((r, v, size));
                        }
                        if i % 3 == 0 && !mine.is_empty() {
                            let (r, v, size) = mine[(i as usize * 7) % mine.len()];
                            let l = s.restore(s.lease(r).unwrap().unwrap());
                            assert_eq!(l.bytes(), &vec![v; size][..]);
                        }
                        if i % 4 == 0 && mine.len() > 3 {
                            let (r, ..) = mine.remove(0);
                            assert!(s.delete(r));
                        }
                    }
                    mine
                })
            })
            .collect();
        let kept: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let (mut memory, mut spilled) = (0, 0);
        for (r, v, size) in &kept {
            let l = s.lease(*r).unwrap().unwrap();
            assert_eq!(l.bytes(), &vec![*v; *size][..]);
            if Store::is_spilled(&l) {
                spilled += size;
            } else {
                memory += size;
            }
        }
        assert_eq!(s.usage(), (kept.len(), memory, spilled));
        assert!(memory <= 4096);
        // A put fails only while every object in memory is leased: rare here.
        assert!(
            stored.load(Ordering::Relaxed) >= 700,
            "{} of 800 puts stored",
            stored.load(Ordering::Relaxed)
        );
        assert!(spilled > 0, "the store had to spill");
    }

    #[test]
    fn a_settled_object_is_never_settled_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(1000, dir.path());
        let p = s.create_pending(CLIENT);
        s.fulfil(p, meta(2), &[1, 2]);
        s.fail(
            p,
            Failure {
                kind: "Lost".into(),
                message: "late".into(),
                attempts: 0,
            },
        );
        s.fulfil(p, meta(3), &[7, 7, 7]);
        assert_eq!(s.lease(p).unwrap().unwrap().bytes(), &[1, 2]);
        assert_eq!(s.usage(), (1, 2, 0));
        let clone = s.lease(p).unwrap().unwrap().clone();
        assert_eq!(clone.bytes(), &[1, 2]);
    }
}
