//! Weights from safetensors files, memory-mapped.
//!
//! A file is mapped once ([`WeightFile::open`]) and shared (`Arc`) by every layer and every
//! replica that uses it: an `F32` tensor is read in place from the page cache, never copied
//! per replica. Tensors stored as `F16`, `BF16` or `F64` are converted to `f32` once, at
//! load, and that copy is shared the same way.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;

/// One weights file, mapped into memory.
pub struct WeightFile {
    path: PathBuf,
    map: Arc<Mmap>,
}

impl fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightFile").field("path", &self.path).finish()
    }
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|source| ModelError::Open {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: the map is read-only. A model file that another process truncates while
        // it is served would fault; that is the contract of every mmap-based loader
        // (safetensors' own included) and is documented in the deployment-file reference.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Open {
            path: path.to_owned(),
            source,
        })?;
        let this = WeightFile {
            path: path.to_owned(),
            map: Arc::new(map),
        };
        this.parse()?;
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> Result<SafeTensors<'_>, ModelError> {
        SafeTensors::deserialize(&self.map).map_err(|e| ModelError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Whether the file has a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.parse().is_ok_and(|st| st.tensor(name).is_ok())
    }

    /// The tensor `name` as `f32`, in place when it is stored as aligned little-endian F32.
    pub fn tensor(&self, name: &str) -> Result<Weight, ModelError> {
        let st = self.parse()?;
        let view = st.tensor(name).map_err(|_| {
            let mut names = st.names();
            names.sort();
            ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_owned(),
                available: names.join(", "),
            }
        })?;
        let shape = view.shape().to_vec();
        let bytes = view.data();
        let offset = bytes.as_ptr() as usize - self.map.as_ptr() as usize;
        let data = match view.dtype() {
            Dtype::F32 if cfg!(target_endian = "little") && offset.is_multiple_of(4) => WeightData::Mapped {
                map: Arc::clone(&self.map),
                offset,
                len: bytes.len() / 4,
            },
            Dtype::F32 => owned(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Dtype::F64 => owned(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32),
            ),
            Dtype::F16 => owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            Dtype::BF16 => owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            other => {
                return Err(ModelError::Dtype {
                    path: self.path.clone(),
                    tensor: name.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(Weight { shape, data })
    }
}

fn owned(values: impl Iterator<Item = f32>) -> WeightData {
    WeightData::Owned(values.collect::<Vec<_>>().into())
}

/// An `f32` tensor of weights: a view into a mapped file or a shared owned buffer.
#[derive(Clone)]
pub struct Weight {
    shape: Vec<usize>,
    data: WeightData,
}

#[derive(Clone)]
enum WeightData {
    Mapped {
        map: Arc<Mmap>,
        /// Byte offset into the map; a multiple of 4.
        offset: usize,
        /// Length in `f32` elements.
        len: usize,
    },
    Owned(Arc<[f32]>),
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weight")
            .field("shape", &self.shape)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl Weight {
    /// A weight held in memory (built-in models, tests).
    pub fn from_vec(shape: Vec<usize>, values: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "weight shape and length disagree. This is a bug."
        );
        Weight {
            shape,
            data: WeightData::Owned(values.into()),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Whether the values are read in place from a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, WeightData::Mapped { .. })
    }

    pub fn as_slice(&self) -> &[f32] {
        match &self.data {
            WeightData::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 4];
                // SAFETY: `offset` is a multiple of 4 and the map is page-aligned, so the
                // bytes are aligned for f32; every bit pattern is a valid f32; the file is
                // little-endian and so is this target (checked when the weight was made).
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
            WeightData::Owned(v) => v,
        }
    }

    /// Bytes this weight occupies (mapped or owned).
    pub fn byte_len(&self) -> usize {
        self.as_slice().len() * 4
    }

    /// Lets the kernel drop the mapped pages that hold only this tensor from the process's
    /// memory, for a weight that was copied (repacked, uploaded) and will not be read
    /// again soon: they stay in the page cache, and a later read maps them back. Pages
    /// shared with a neighbouring tensor are kept. Owned weights are left as they are.
    pub fn release_pages(&self) {
        let WeightData::Mapped { map, offset, len } = &self.data else {
            return;
        };
        let page = page_size();
        let start = offset.next_multiple_of(page);
        let end = (offset + len * 4) / page * page;
        if end > start {
            // SAFETY: the map is read-only and file-backed: dropping its pages loses
            // nothing (a later access reads the same bytes from the file), so no reference
            // into it sees different data.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

/// The system's page size (4 KiB where it cannot be read).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}
