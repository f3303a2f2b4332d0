//! Leases: read handles on ready objects. While one lives its object is not spilled, and
//! its bytes stay valid even if the object is deleted. A lease counts a use of its
//! object; it changes no byte account.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prism_protocol::DType;
use tokio::time::Instant;

use super::buffer::Data;
use super::{Meta, ObjectRef, State, Store, StoreError};

/// A read handle on a ready object. While it lives the object is not spilled, and its
/// bytes stay valid even if the object is deleted.
pub struct Lease {
    pub object_ref: ObjectRef,
    pub meta: Arc<Meta>,
    pub(super) data: Arc<Data>,
    pub(super) uses: Arc<Uses>,
}

/// How many leases an object has.
pub(super) struct Uses(pub(super) AtomicUsize);

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("object_ref", &self.object_ref)
            .field("meta", &self.meta)
            .finish()
    }
}

impl Lease {
    /// A lease on `data`, counted as a use of the object.
    pub(super) fn new(object_ref: ObjectRef, meta: Arc<Meta>, data: Arc<Data>, uses: Arc<Uses>) -> Lease {
        uses.0.fetch_add(1, Ordering::AcqRel);
        Lease {
            object_ref,
            meta,
            data,
            uses,
        }
    }

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

    /// Whether it reads a spill file.
    pub fn is_spilled(&self) -> bool {
        matches!(*self.data, Data::Mapped(..))
    }
}

impl Clone for Lease {
    /// Another use of the same object.
    fn clone(&self) -> Self {
        Lease::new(
            self.object_ref,
            Arc::clone(&self.meta),
            Arc::clone(&self.data),
            Arc::clone(&self.uses),
        )
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

impl Store {
    /// A lease on a ready object, now (a spilled one reads its mapping; see
    /// [`Store::restore`]); `None` while it is pending.
    pub fn lease(&self, r: ObjectRef) -> Result<Option<Lease>, StoreError> {
        let mut g = self.lock();
        let tick = g.next_tick();
        let e = g.objects.get_mut(&r).ok_or(StoreError::NotFound(r))?;
        e.touch(tick, Instant::now());
        match &e.state {
            State::Pending => Ok(None),
            State::Failed(f) => Err(StoreError::Failed {
                object_ref: r,
                failure: f.clone(),
            }),
            // Counted before the lock is released, so no spill can pick it from here on.
            State::Ready { data, meta } => Ok(Some(Lease::new(
                r,
                Arc::clone(meta),
                Arc::clone(data),
                Arc::clone(&e.uses),
            ))),
        }
    }
}
