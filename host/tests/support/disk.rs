//! A full disk on demand: a small tmpfs mounted for one test, and a file that fills it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size, mounted on a fresh temp dir and unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `size_mb` MiB; `None` when this process may not mount (not root), and the
    /// caller skips with a notice.
    pub fn mount(size_mb: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fill the filesystem of `dir` with one file until a write fails; returns the file's path
/// (remove it to free the space again).
pub fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5Au8; 64 << 10];
    for _ in 0..100_000 {
        if f.write_all(&chunk).and_then(|_| f.flush()).is_err() {
            return path;
        }
    }
    panic!("the disk never filled up");
}
