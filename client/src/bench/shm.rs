//! `--shared-memory system`: the run's tensors in POSIX shared memory, as Triton's
//! system shared-memory extension has them. The inputs of every request variant are
//! written once into one region; each closed-loop worker has its own output region, so
//! answers in flight never share bytes. The regions are registered with the server before
//! the run and unregistered (and their files removed) when the run is dropped.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::Client;

/// The files and registrations of one run; removed on drop.
#[derive(Debug)]
pub struct Regions {
    client: Client,
    names: Vec<String>,
    files: Vec<PathBuf>,
    runtime: tokio::runtime::Handle,
}

/// A region to create: its name (registration and file) and its bytes.
pub struct Region<'a> {
    pub name: String,
    pub contents: Contents<'a>,
}

pub enum Contents<'a> {
    /// Written into the region.
    Bytes(&'a [u8]),
    /// This many zero bytes, for the server to write into.
    Zeros(usize),
}

impl Regions {
    /// Creates `/dev/shm/<name>` for every region, fills it and registers it.
    pub async fn create(client: &Client, regions: Vec<Region<'_>>) -> Result<Regions> {
        let mut made = Regions {
            client: client.clone(),
            names: Vec::new(),
            files: Vec::new(),
            runtime: tokio::runtime::Handle::current(),
        };
        for r in regions {
            let path = PathBuf::from("/dev/shm").join(&r.name);
            let size = match r.contents {
                Contents::Bytes(b) => {
                    std::fs::write(&path, b).with_context(|| format!("writing {}", path.display()))?;
                    b.len()
                }
                Contents::Zeros(n) => {
                    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                    f.set_len(n as u64)?;
                    n
                }
            };
            made.files.push(path);
            client
                .register_system_shared_memory(&r.name, &format!("/{}", r.name), 0, size as u64)
                .await
                .with_context(|| format!("registering shared memory region `{}`", r.name))?;
            made.names.push(r.name);
        }
        Ok(made)
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        let (client, names) = (self.client.clone(), std::mem::take(&mut self.names));
        // Best effort: a server that is gone has nothing to unregister.
        self.runtime.spawn(async move {
            for n in names {
                let _ = client.unregister_system_shared_memory(&n).await;
            }
        });
    }
}
