//! Component bytes on disk, named by their SHA-256: `<dir>/<hex>.wasm`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{RegistryError, Result};
use crate::types::ComponentHash;

/// A directory of component blobs. The same bytes always land in the same file, once.
///
/// # Examples
///
/// ```
/// use aggregate_host::registry::ComponentStore;
/// let dir = tempfile::tempdir().unwrap();
/// let store = ComponentStore::open(dir.path()).unwrap();
/// let (a, new_a) = store.insert(b"\0asm-bytes").unwrap();
/// let (b, new_b) = store.insert(b"\0asm-bytes").unwrap();
/// assert_eq!(a, b);
/// assert!(new_a && !new_b);
/// assert_eq!(store.get(&a).unwrap(), b"\0asm-bytes");
/// ```
pub struct ComponentStore {
    dir: PathBuf,
}

impl ComponentStore {
    /// Open (create) the directory.
    ///
    /// # Errors
    ///
    /// [`RegistryError::BlobIo`] when it cannot be created.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| RegistryError::BlobIo {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The file a hash is stored in.
    pub fn path(&self, hash: &ComponentHash) -> PathBuf {
        self.dir.join(format!("{}.wasm", hash.to_hex()))
    }

    /// Whether a blob exists.
    pub fn contains(&self, hash: &ComponentHash) -> bool {
        self.path(hash).exists()
    }

    /// Store bytes; returns their hash and whether they were new.
    ///
    /// # Errors
    ///
    /// [`RegistryError::BlobIo`] on a write failure.
    pub fn insert(&self, bytes: &[u8]) -> Result<(ComponentHash, bool)> {
        let hash = ComponentHash::of(bytes);
        let new = self.insert_with_hash(&hash, bytes)?;
        Ok((hash, new))
    }

    /// Store bytes whose hash the caller already computed (must be `ComponentHash::of(bytes)`).
    pub(crate) fn insert_with_hash(&self, hash: &ComponentHash, bytes: &[u8]) -> Result<bool> {
        debug_assert_eq!(*hash, ComponentHash::of(bytes));
        let path = self.path(hash);
        if path.exists() {
            return Ok(false);
        }
        let io = |source| RegistryError::BlobIo {
            path: path.clone(),
            source,
        };
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(true)
    }

    /// Write bytes fetched from elsewhere over a missing or damaged local copy, after checking
    /// they hash to `hash`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::CorruptBlob`] when they do not (nothing is written), or an I/O error.
    pub fn repair(&self, hash: &ComponentHash, bytes: &[u8]) -> Result<()> {
        let actual = ComponentHash::of(bytes);
        if actual != *hash {
            return Err(RegistryError::CorruptBlob {
                hash: *hash,
                actual,
            });
        }
        let path = self.path(hash);
        let _ = std::fs::remove_file(&path);
        self.insert_with_hash(hash, bytes).map(|_| ())
    }

    /// Read a blob and check it still hashes to its name.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownComponent`], [`RegistryError::CorruptBlob`], or an I/O error.
    pub fn get(&self, hash: &ComponentHash) -> Result<Vec<u8>> {
        let path = self.path(hash);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::UnknownComponent(*hash))
            }
            Err(source) => return Err(RegistryError::BlobIo { path, source }),
        };
        let actual = ComponentHash::of(&bytes);
        if actual != *hash {
            return Err(RegistryError::CorruptBlob {
                hash: *hash,
                actual,
            });
        }
        Ok(bytes)
    }
}
