//! Files written for the admin: private keys, certificates, chains,
//! ceremony files.
//!
//! Every write goes to a temporary file in the target's directory, is
//! synced, and only then takes the target's name: a crash or a full disk
//! leaves the old file or the new one, never half of one. A private key is
//! only ever created, never replaced ([`create_new`]); anything else may
//! replace an older file of its kind, but never a file that holds a private
//! key ([`replace`]): a key written by mistake over its own certificate's
//! `--out` would be lost for good.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path` with `content` and file mode `mode`; refuses if `path`
/// exists (whatever it is), so a key is never overwritten. The file
/// appears whole or not at all.
pub fn create_new(path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(exists(path));
    }
    let tmp = write_temp(path, content, mode)?;
    // link(2) gives the complete file its name only if the name is free,
    // atomically: a file created meanwhile by someone else is not replaced.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists(path)),
        // A filesystem without hard links (FAT on a USB stick, where
        // custodian keys often live): create the file itself, exclusively,
        // and remove it again if it cannot be written whole.
        Err(_) => create_in_place(path, content, mode),
    }
}

/// Writes `content` to `path`, replacing an older file there (a symbolic
/// link is followed: the file it points to is replaced) but never one that
/// holds a private key. An existing file keeps its mode; a new one gets
/// 0644 (less the umask).
pub fn replace(path: &Path, content: &[u8]) -> Result<(), String> {
    let (target, mode) = match replaceable(path)? {
        Dest::Stream => {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.write_all(content))
                .map_err(|e| format!("cannot write {}: {e}", path.display()));
        }
        Dest::File(target, old) => (target, old),
    };
    let tmp = write_temp(&target, content, mode.map_or(0o644, |o| o.mode))?;
    if let Some(old) = mode {
        // The temporary file was created with the umask applied and is
        // ours: give it the old file's mode and owner, so that whoever
        // read the old file reads the new one.
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(old.mode));
        if std::os::unix::fs::chown(&tmp, Some(old.uid), Some(old.gid)).is_err() {
            let _ = std::fs::remove_file(&tmp);
            // Not ours to give away: written in place, as the owner keeps it.
            return std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&target)
                .and_then(|mut f| f.write_all(content).and_then(|()| f.sync_all()))
                .map_err(|e| format!("cannot write {}: {e}", path.display()));
        }
    }
    match std::fs::rename(&tmp, &target) {
        Ok(()) => {
            sync_dir(&target);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(format!("cannot write {}: {e}", path.display()))
        }
    }
}

/// Checks, before anything is done that would need the file, that
/// [`replace`] may write `path`.
pub fn check_replaceable(path: &Path) -> Result<(), String> {
    if let Dest::File(target, _) = replaceable(path)? {
        // A missing directory or one castellanctl may not write to shows now.
        let probe = write_temp(&target, b"", 0o600)?;
        let _ = std::fs::remove_file(probe);
    }
    Ok(())
}

/// Where [`replace`] writes.
enum Dest {
    /// Not a regular file: a terminal, a pipe, `/dev/stdout`; written to
    /// as it is.
    Stream,
    /// A regular file (new, or an older one), replaced whole.
    File(PathBuf, Option<Old>),
}

/// What a replaced file keeps.
#[derive(Clone, Copy)]
struct Old {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Where [`replace`] would write for `path`; an error if it must not.
fn replaceable(path: &Path) -> Result<Dest, String> {
    if let Ok(m) = std::fs::metadata(path)
        && !m.is_file()
        && !m.is_dir()
    {
        return Ok(Dest::Stream);
    }
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).map_err(|e| {
            format!(
                "{} is a symbolic link whose target cannot be resolved ({e}); give the file \
                 itself",
                path.display()
            )
        })?,
        _ => path.to_path_buf(),
    };
    let mode = match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => {
            return Err(format!(
                "{} is a directory; give a file name (e.g. {}/cert.pem)",
                path.display(),
                path.display()
            ));
        }
        Ok(m) => {
            if holds_private_key(&target).map_err(|e| {
                format!(
                    "cannot read {} to check that it holds no private key ({e}); choose \
                     another file to write to",
                    path.display()
                )
            })? {
                return Err(format!(
                    "{} holds a private key; it is never overwritten: choose another file \
                     to write to",
                    path.display()
                ));
            }
            use std::os::unix::fs::MetadataExt;
            Some(Old {
                mode: m.permissions().mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            })
        }
        Err(_) => None,
    };
    Ok(Dest::File(target, mode))
}

/// Whether the file at `path` looks like a private key: PEM of any private
/// key (PKCS#8, SEC1, PKCS#1, encrypted) or a castellan custodian key file.
fn holds_private_key(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(1024 * 1024)
        .read_to_end(&mut head)?;
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    Ok(has(b"PRIVATE KEY-----") || has(b"castellan-custodian-key-"))
}

fn exists(path: &Path) -> String {
    format!(
        "{} exists already and is never overwritten: choose another file name, or move \
         the old file away if it is really not needed",
        path.display()
    )
}

/// A new temporary file next to `path` holding `content`, synced.
fn write_temp(path: &Path, content: &[u8], mode: u32) -> Result<PathBuf, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} does not name a file", path.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = None;
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{name}.{}-{nanos}-{attempt}.tmp",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(mut f) => {
                return match f.write_all(content).and_then(|()| f.sync_all()) {
                    Ok(()) => Ok(tmp),
                    Err(e) => {
                        drop(f);
                        let _ = std::fs::remove_file(&tmp);
                        Err(format!(
                            "cannot write {}: {e} (nothing was written)",
                            path.display()
                        ))
                    }
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
        }
    }
    Err(format!(
        "cannot create a temporary file next to {}: {}",
        path.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

fn create_in_place(path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists(path),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    match f.write_all(content).and_then(|()| f.sync_all()) {
        Ok(()) => {
            sync_dir(path);
            Ok(())
        }
        Err(e) => {
            drop(f);
            let _ = std::fs::remove_file(path);
            Err(format!(
                "cannot write {}: {e} (nothing was written)",
                path.display()
            ))
        }
    }
}

/// Makes the new name durable. Best effort: some filesystems refuse to
/// sync a directory, and the file itself is already synced.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_with_its_mode_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        create_new(&key, b"-----BEGIN PRIVATE KEY-----\n", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(create_new(&key, b"other", 0o600).is_err());
        assert!(replace(&key, b"-----BEGIN CERTIFICATE-----\n").is_err());
        assert_eq!(
            std::fs::read(&key).unwrap(),
            b"-----BEGIN PRIVATE KEY-----\n"
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_certificate_replaces_an_older_one_and_keeps_its_mode_and_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "old").unwrap();
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o640)).unwrap();
        // Owned by someone else where the test may give it away (root).
        let owner = std::os::unix::fs::chown(&cert, Some(65534), Some(65534))
            .map(|()| (65534, 65534))
            .unwrap_or_else(|_| {
                let m = std::fs::metadata(&cert).unwrap();
                (m.uid(), m.gid())
            });
        replace(&cert, b"new").unwrap();
        let m = std::fs::metadata(&cert).unwrap();
        assert_eq!((m.uid(), m.gid()), owner);
        assert_eq!(std::fs::read(&cert).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
