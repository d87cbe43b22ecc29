//! A small tmpfs for tests of a full disk, shared by the daemon's
//! integration tests (`tests/common`) and the signer's
//! (`signer/tests/refusals.rs`, by path).

use std::path::{Path, PathBuf};

/// A small tmpfs (tests run as root), unmounted when dropped, even by a
/// failing test (lazily, so a file still open does not keep it mounted).
pub struct Tmpfs {
    pub path: PathBuf,
    _parent: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts over a new empty directory, removed after the unmount.
    pub fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().expect("temporary directory");
        let path = parent.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let mut fs = Tmpfs::mount_at(&path, size);
        fs._parent = Some(parent);
        fs
    }

    /// Mounts over the empty directory `path`.
    pub fn mount_at(path: &Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs {
            path: path.to_path_buf(),
            _parent: None,
        }
    }

    pub fn block_size(&self) -> u64 {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%S"])
            .arg(&self.path)
            .output()
            .expect("run stat");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("block size")
    }

    /// Fills the file system.
    pub fn fill(&self) {
        self.fill_leaving(0);
    }

    /// Fills the file system, then frees `blocks` blocks again.
    pub fn fill_leaving(&self, blocks: u64) {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let len = f.metadata().expect("filler size").len();
        f.set_len(len.saturating_sub(blocks * self.block_size()))
            .expect("free blocks");
    }

    pub fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
