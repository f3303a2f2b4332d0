//! Making room: reservations for puts in flight, spilling the least recently used
//! objects that nothing uses to files, and restoring spilled objects into memory. Files
//! are written outside the store's lock; accounts change only under it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::buffer::{Data, write_spill_file};
use super::{Entry, Inner, Lease, ObjectRef, State, Store, StoreError};

/// Room taken for a put in flight; given back if the put does not complete.
pub struct Reservation {
    store: Arc<Store>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The room now belongs to an object (it is given back when the object goes).
    pub(super) fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.store.lock().give_back(self.bytes);
        }
    }
}

impl Store {
    /// Makes room for `bytes` (spilling what it must) and takes it. Blocking: spilling
    /// writes files, which happens outside the store's lock.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, StoreError> {
        if let Err(e) = self.take_room(bytes) {
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
                g.take(bytes);
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
            // Spill files may grow to `max_spill_bytes`, those being written included.
            // Victims are the least recently used objects that fit that budget.
            let budget = self.limits.max_spill_bytes.saturating_sub(g.spilled + being_spilled);
            candidates.sort_unstable();
            let (mut chosen, mut freed, mut capped) = (Vec::new(), 0, false);
            for (_, r, size) in candidates {
                if g.used + bytes <= self.capacity + freed {
                    break;
                }
                if freed + size > budget {
                    capped = true;
                    continue;
                }
                chosen.push(r);
                freed += size;
            }
            if g.used + bytes > self.capacity + freed + being_spilled {
                let reason = if capped {
                    format!(
                        "spilling is capped at object_store.max_spill_bytes ({} bytes, {} spilled)",
                        self.limits.max_spill_bytes,
                        g.spilled + being_spilled
                    )
                } else {
                    let spillable = freed + being_spilled;
                    format!("even spilling every object not in use ({spillable} bytes) would not free enough")
                };
                return Err(full(&g, reason));
            }
            if idle_rounds >= 64 {
                return Err(full(&g, "the objects chosen to spill kept being used; retry".into()));
            }
            let mut victims = Vec::with_capacity(chosen.len());
            for r in chosen {
                let e = g.objects.get_mut(&r).expect("listed above");
                e.spilling = true;
                let State::Ready { data, .. } = &e.state else {
                    unreachable!("in memory means ready")
                };
                victims.push((r, Arc::clone(data)));
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
            let round = g.next_tick();
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
                        g.spilled_out(meta.bytes());
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

    /// Brings the object of a lease on a spilled object back into memory when room can
    /// be made (spilling others if it must); otherwise, or if the object changed
    /// meanwhile, the lease keeps reading the mapping. Blocking: copies and may write
    /// files, outside the lock.
    pub fn restore(self: &Arc<Self>, lease: Lease) -> Lease {
        if !lease.is_spilled() {
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
        let uses = std::sync::Arc::clone(&e.uses);
        reservation.keep();
        g.spill_dropped(bytes);
        drop(g);
        if let Data::Mapped(_, path) = &*lease.data {
            let _ = std::fs::remove_file(path);
        }
        self.metrics.restores.inc();
        // The old lease drops here and gives back its use; the new one holds its own.
        Lease::new(lease.object_ref, Arc::clone(&lease.meta), data, uses)
    }

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
