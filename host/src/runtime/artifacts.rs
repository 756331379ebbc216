//! Precompiled components on disk, so a restart does not recompile.
//!
//! Layout: `<dir>/<engine fingerprint>/<component hash>.cwasm`. The fingerprint covers the
//! wasmtime version and every engine setting that affects code, so an artifact from another build
//! or configuration is never even looked at. Each file carries a header with the component hash it
//! was compiled from and the SHA-256 of the compiled bytes; loading native code is `unsafe`, so a
//! file whose header does not match — corrupted, truncated, swapped — is recompiled, never trusted.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::types::ComponentHash;

const MAGIC: &[u8; 8] = b"AGHCWA01";
const HEADER_LEN: usize = 8 + 32 + 32;

/// What a lookup found.
pub(crate) enum Lookup {
    Missing,
    Loaded(Component),
    /// There was a file but it was not usable; the reason goes to the log.
    Rejected(String),
}

pub(crate) struct ArtifactStore {
    dir: PathBuf,
}

/// Feeds `Hash` output into SHA-256 so the fingerprint is stable across processes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A stable name for the engine's code-compatibility settings.
pub(crate) fn engine_fingerprint(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

impl ArtifactStore {
    pub(crate) fn open(root: &Path, engine: &Engine) -> std::io::Result<Self> {
        let dir = root.join(engine_fingerprint(engine));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Remove every precompiled artifact; returns how many files were removed.
    pub(crate) fn clear(&self) -> std::io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                std::fs::remove_file(&path)?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub(crate) fn path(&self, hash: &ComponentHash) -> PathBuf {
        self.dir.join(format!("{}.cwasm", hash.to_hex()))
    }

    pub(crate) fn get(&self, engine: &Engine, hash: &ComponentHash) -> Lookup {
        let bytes = match std::fs::read(self.path(hash)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
            Err(e) => return Lookup::Rejected(format!("unreadable: {e}")),
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Lookup::Rejected("not an artifact of this host (bad header)".into());
        }
        if &bytes[8..40] != hash.as_bytes() {
            return Lookup::Rejected("compiled from a different component".into());
        }
        let body = &bytes[HEADER_LEN..];
        if Sha256::digest(body).as_slice() != &bytes[40..72] {
            return Lookup::Rejected("checksum mismatch (corrupted or truncated)".into());
        }
        // SAFETY: the bytes were written by `insert` below from `Component::serialize` on an engine
        // with the same fingerprint, and the checksum proves they are unchanged since. wasmtime
        // additionally checks its own version and settings header.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(c) => Lookup::Loaded(c),
            Err(e) => Lookup::Rejected(format!("wasmtime refused it: {e}")),
        }
    }

    /// Write atomically: a crash leaves either no file or a whole one.
    pub(crate) fn insert(&self, hash: &ComponentHash, component: &Component) -> anyhow::Result<()> {
        let body = component.serialize()?;
        let mut tmp = tempfile_in(&self.dir)?;
        tmp.1.write_all(MAGIC)?;
        tmp.1.write_all(hash.as_bytes())?;
        tmp.1.write_all(&Sha256::digest(&body))?;
        tmp.1.write_all(&body)?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, self.path(hash))?;
        Ok(())
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let path = dir.join(name);
    let f = std::fs::File::create(&path)?;
    Ok((path, f))
}
