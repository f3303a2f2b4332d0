//! Triton's system shared-memory extension: a client on the same host registers a POSIX
//! shared-memory region (`/dev/shm/<key>`, from an offset, of a size) under a name, and
//! its requests name a region, an offset and a size instead of carrying tensor bytes.
//! Inputs are read where they lie (the request's tensor is a view of the mapping, not a
//! copy); outputs are written into the client's region.
//!
//! Off unless `[server] allow_shared_memory = true`: a registered region lets the server
//! read and write the client's memory, which only a client on the same host that trusts
//! it should ask for.
//!
//! The client owns the region's contents: writing an input while its request runs, or
//! reading an output before the answer, races as it would with Triton. A client that
//! truncates its object after registering it makes the server fault (SIGBUS) when it next
//! touches the lost pages, as with Triton: only clients the server trusts may use this.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

/// Where POSIX shared memory lives on Linux (`shm_open` names are files here).
pub const SHM_DIR: &str = "/dev/shm";

/// Why a shared-memory call or a tensor in shared memory was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("system shared memory is disabled on this server; enable it with `[server] allow_shared_memory = true`")]
    Disabled,
    #[error("shared memory region `{0}` is not registered")]
    NotRegistered(String),
    #[error("shared memory region `{0}` is already registered; unregister it first")]
    AlreadyRegistered(String),
    #[error("{0}")]
    Invalid(String),
    #[error("shared memory key `{key}`: cannot map {}: {source}", path.display())]
    Io {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A registered region, as its status reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// A registered region: the client's bytes `[offset, offset + byte_size)` of its shared
/// memory object, mapped shared (what the server writes, the client sees).
struct Region {
    status: RegionStatus,
    map: MmapRaw,
}

/// `len` bytes of a region from `start`, owned by the bytes that view them: the mapping
/// lives as long as any request reads it, even past an unregister.
struct View {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `start + len` was checked against the mapping's length when the view was
        // made, and the mapping lives as long as `self.region`. The bytes are shared with
        // the client, which may write them at any time (a request then reads whatever is
        // there, as with Triton); the server writes a region only for an output, after
        // the request that names it has read its inputs (a view lives from decoding to
        // the copy of its rows), so only a client that places another request's output
        // over this input's bytes races with it.
        unsafe { std::slice::from_raw_parts(self.region.map.as_ptr().add(self.start), self.len) }
    }
}

/// The registered regions.
pub struct SharedMemory {
    enabled: bool,
    dir: PathBuf,
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
}

impl SharedMemory {
    /// The registry; `enabled` false refuses every call.
    pub fn new(enabled: bool) -> Self {
        Self::in_dir(enabled, SHM_DIR)
    }

    /// A registry whose keys name files of `dir` (tests use a temporary folder).
    pub fn in_dir(enabled: bool, dir: impl Into<PathBuf>) -> Self {
        SharedMemory {
            enabled,
            dir: dir.into(),
            regions: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn check_enabled(&self) -> Result<(), ShmError> {
        if self.enabled { Ok(()) } else { Err(ShmError::Disabled) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file a key names: `/dev/shm/<key>` (the key as `shm_open` takes it, with or
    /// without its leading `/`). Anything that would leave the folder is refused.
    fn path(&self, key: &str) -> Result<PathBuf, ShmError> {
        let name = key.strip_prefix('/').unwrap_or(key);
        if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
            return Err(ShmError::Invalid(format!(
                "shared memory key `{key}` does not name a region of {}: expected `/name`, one name without `/`",
                self.dir.display()
            )));
        }
        Ok(self.dir.join(name))
    }

    /// Registers `byte_size` bytes of the shared memory object `key` from `offset` as
    /// region `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), ShmError> {
        self.check_enabled()?;
        if name.is_empty() {
            return Err(ShmError::Invalid("a shared memory region needs a name".into()));
        }
        if byte_size == 0 {
            return Err(ShmError::Invalid(format!(
                "shared memory region `{name}`: byte_size must be at least 1"
            )));
        }
        let path = self.path(key)?;
        let io = |source| ShmError::Io {
            key: key.to_owned(),
            path: path.clone(),
            source,
        };
        // Not through a link: a key names an object of the folder, nothing elsewhere.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(ShmError::Invalid(format!(
                "shared memory key `{key}` is not a shared memory object ({} is not a regular file)",
                path.display()
            )));
        }
        let len = meta.len();
        let end = offset.checked_add(byte_size);
        if end.is_none_or(|end| end > len) {
            return Err(ShmError::Invalid(format!(
                "shared memory region `{name}`: offset {offset} + byte_size {byte_size} is beyond the end of `{key}` ({len} bytes)"
            )));
        }
        let size =
            usize::try_from(byte_size).map_err(|_| ShmError::Invalid(format!("byte_size {byte_size} is too large")))?;
        let map = MmapOptions::new().offset(offset).len(size).map_raw(&file).map_err(io)?;
        let mut regions = self.lock();
        if regions.contains_key(name) {
            return Err(ShmError::AlreadyRegistered(name.to_owned()));
        }
        let status = RegionStatus {
            name: name.to_owned(),
            key: key.to_owned(),
            offset,
            byte_size,
        };
        tracing::info!(name, key, offset, byte_size, "shared memory region registered");
        regions.insert(name.to_owned(), Arc::new(Region { status, map }));
        Ok(())
    }

    /// Unregisters region `name`, or every region when `name` is empty. As Triton, a name
    /// that is not registered is not an error (a client's clean-up may run twice).
    /// Requests that read a region keep their view of it until they end.
    pub fn unregister(&self, name: &str) -> Result<(), ShmError> {
        self.check_enabled()?;
        let mut regions = self.lock();
        if name.is_empty() {
            regions.clear();
        } else {
            regions.remove(name);
        }
        Ok(())
    }

    /// The status of region `name`, or of every region when `name` is empty.
    pub fn status(&self, name: &str) -> Result<Vec<RegionStatus>, ShmError> {
        self.check_enabled()?;
        let regions = self.lock();
        if name.is_empty() {
            return Ok(regions.values().map(|r| r.status.clone()).collect());
        }
        regions
            .get(name)
            .map(|r| vec![r.status.clone()])
            .ok_or_else(|| ShmError::NotRegistered(name.to_owned()))
    }

    fn region(&self, name: &str) -> Result<Arc<Region>, ShmError> {
        self.check_enabled()?;
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ShmError::NotRegistered(name.to_owned()))
    }

    /// `size` bytes of region `name` from `offset` (relative to the region), in place: the
    /// bytes are a view of the mapping.
    pub fn read(&self, place: &Place) -> Result<Bytes, ShmError> {
        let region = self.region(&place.region)?;
        let (start, len) = bounds(&region, place, place.byte_size)?;
        Ok(Bytes::from_owner(View { region, start, len }))
    }

    /// Checks that `place` lies in a registered region (before a request runs, so that an
    /// output with nowhere to go is refused before its work is done).
    pub fn check(&self, place: &Place) -> Result<(), ShmError> {
        let region = self.region(&place.region)?;
        bounds(&region, place, place.byte_size).map(drop)
    }

    /// Writes `data` into region `name` at `offset`; `data` must fit in the place's
    /// `byte_size`.
    pub fn write(&self, place: &Place, data: &[u8]) -> Result<(), ShmError> {
        let region = self.region(&place.region)?;
        if data.len() as u64 > place.byte_size {
            return Err(ShmError::Invalid(format!(
                "output of {} bytes does not fit in the {} bytes given in shared memory region `{}` (shared_memory_byte_size)",
                data.len(),
                place.byte_size,
                place.region
            )));
        }
        let (start, len) = bounds(&region, place, data.len() as u64)?;
        // SAFETY: `[start, start + len)` lies inside the mapping (checked by `bounds`),
        // which is writable and lives while `region` does. The client gave this range for
        // the server to write; no one in the server reads or writes it meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), region.map.as_mut_ptr().add(start), len) };
        Ok(())
    }
}

/// A tensor's place in shared memory, as a request gives it: `shared_memory_region`,
/// `shared_memory_offset` (default 0) and `shared_memory_byte_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub region: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// Where `len` bytes of `place` lie in `region`'s mapping, checked.
fn bounds(region: &Region, place: &Place, len: u64) -> Result<(usize, usize), ShmError> {
    let size = region.status.byte_size;
    match place.offset.checked_add(place.byte_size) {
        Some(end) if end <= size => Ok((place.offset as usize, len as usize)),
        _ => Err(ShmError::Invalid(format!(
            "shared_memory_offset {} + shared_memory_byte_size {} is beyond shared memory region `{}` ({size} bytes)",
            place.offset, place.byte_size, place.region
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(size: usize) -> (tempfile::TempDir, SharedMemory) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("region"), vec![0u8; size]).unwrap();
        let shm = SharedMemory::in_dir(true, dir.path());
        (dir, shm)
    }

    fn place(region: &str, offset: u64, byte_size: u64) -> Place {
        Place {
            region: region.into(),
            offset,
            byte_size,
        }
    }

    #[test]
    fn what_is_written_is_read_back_in_place_and_seen_in_the_file() {
        let (dir, shm) = setup(64);
        shm.register("r", "/region", 16, 32).unwrap();
        shm.write(&place("r", 4, 8), &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(&shm.read(&place("r", 4, 8)).unwrap()[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let file = std::fs::read(dir.path().join("region")).unwrap();
        assert_eq!(
            &file[20..28],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            "offsets add up: region 16 + tensor 4"
        );
        // A view outlives an unregister.
        let view = shm.read(&place("r", 0, 32)).unwrap();
        shm.unregister("r").unwrap();
        assert_eq!(view.len(), 32);
        assert!(matches!(shm.read(&place("r", 0, 1)), Err(ShmError::NotRegistered(_))));
    }

    #[test]
    fn bad_regions_and_places_are_refused_with_the_reason() {
        let (_dir, shm) = setup(64);
        let err = |r: Result<(), ShmError>| r.unwrap_err().to_string();
        assert!(err(shm.register("r", "/region", 60, 8)).contains("beyond the end of `/region` (64 bytes)"));
        assert!(err(shm.register("r", "/../etc/passwd", 0, 8)).contains("does not name a region"));
        assert!(err(shm.register("r", "/missing", 0, 8)).contains("cannot map"));
        assert!(err(shm.register("r", "/region", 0, 0)).contains("at least 1"));
        shm.register("r", "/region", 0, 16).unwrap();
        assert!(err(shm.register("r", "/region", 0, 16)).contains("already registered"));
        assert!(
            shm.read(&place("r", 8, 16))
                .unwrap_err()
                .to_string()
                .contains("beyond shared memory region `r` (16 bytes)")
        );
        assert!(err(shm.write(&place("r", 0, 4), &[0; 8])).contains("does not fit in the 4 bytes"));
        shm.unregister("nope")
            .expect("unregistering an unknown name is not an error");
        assert!(
            shm.status("nope")
                .unwrap_err()
                .to_string()
                .contains("`nope` is not registered")
        );
        std::os::unix::fs::symlink("/etc/hostname", _dir.path().join("link")).unwrap();
        assert!(
            err(shm.register("l", "/link", 0, 1)).contains("cannot map"),
            "links are not followed"
        );
        std::fs::create_dir(_dir.path().join("folder")).unwrap();
        let folder = err(shm.register("f", "/folder", 0, 1));
        assert!(
            folder.contains("not a shared memory object") || folder.contains("cannot map"),
            "{folder}"
        );
        assert_eq!(shm.status("").unwrap().len(), 1);
        shm.unregister("").unwrap();
        assert!(shm.status("").unwrap().is_empty());
        let off = SharedMemory::in_dir(false, "/tmp");
        assert!(matches!(off.status(""), Err(ShmError::Disabled)));
    }
}
