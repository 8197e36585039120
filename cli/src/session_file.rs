//! `--session-file`: the TLS sessions of earlier runs, so the next run of a short-lived
//! command resumes instead of making a full handshake.
//!
//! One line per server name: `<name> <base64 of the DER SSL_SESSION>`. A session holds what
//! OpenSSL needs to resume: the ticket, the resumption secret, the cipher suite, its
//! lifetime and the server's (public) certificate. The file is written whole to a new file
//! beside it (mode 0600, never through a symlink) and renamed over the old one; it is only
//! read when it is a regular file owned by this user that nobody else may read.

use anyhow::{bail, Context};
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Most sessions kept (one per server name).
const MAX_ENTRIES: usize = 16;
/// Files larger than this are not read.
const MAX_FILE: u64 = 64 * 1024;

pub struct SessionFile {
    path: PathBuf,
    entries: BTreeMap<String, Vec<u8>>,
    changed: bool,
}

impl SessionFile {
    /// Reads `path` if it exists and is safe to trust; a missing file is an empty one.
    pub fn open(path: &Path) -> anyhow::Result<SessionFile> {
        let mut f = SessionFile {
            path: path.to_path_buf(),
            entries: BTreeMap::new(),
            changed: false,
        };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(f),
            Err(e) => return Err(e).with_context(|| format!("--session-file {}", path.display())),
        };
        if meta.file_type().is_symlink() {
            bail!(
                "--session-file {} is a symlink; not followed",
                path.display()
            );
        }
        if !meta.is_file() {
            bail!("--session-file {} is not a regular file", path.display());
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            bail!("--session-file {} belongs to another user", path.display());
        }
        if meta.mode() & 0o077 != 0 {
            bail!(
                "--session-file {}: mode {:o} lets others read it; chmod 600 it or remove it",
                path.display(),
                meta.mode() & 0o777
            );
        }
        if meta.len() > MAX_FILE {
            bail!(
                "--session-file {} is too large to be a session file",
                path.display()
            );
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("--session-file {}", path.display()))?;
        let text = std::io::read_to_string(file)?;
        for line in text.lines() {
            let Some((name, b64)) = line.split_once(' ') else {
                continue;
            };
            if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                f.entries.insert(name.to_owned(), der);
            }
        }
        Ok(f)
    }

    /// The saved session for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries.get(name).map(Vec::as_slice)
    }

    /// Keeps `der` as `name`'s session (replacing a stale or refused one).
    pub fn put(&mut self, name: &str, der: Vec<u8>) {
        if self.entries.get(name) != Some(&der) {
            self.entries.insert(name.to_owned(), der);
            while self.entries.len() > MAX_ENTRIES {
                let first = self.entries.keys().next().cloned().expect("non-empty");
                self.entries.remove(&first);
            }
            self.changed = true;
        }
    }

    /// Forgets `name`'s session (it no longer loads).
    pub fn forget(&mut self, name: &str) {
        self.changed |= self.entries.remove(name).is_some();
    }

    /// Writes the file if anything changed: a new file (0600, created exclusively) beside
    /// it, then a rename over it.
    pub fn save(&mut self) -> anyhow::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        let name = self
            .path
            .file_name()
            .context("--session-file names no file")?
            .to_string_lossy()
            .into_owned();
        let tmp = dir
            .unwrap_or(Path::new("."))
            .join(format!(".{name}.{}.tmp", std::process::id()));
        let mut out = String::new();
        for (k, v) in &self.entries {
            out.push_str(k);
            out.push(' ');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(v));
            out.push('\n');
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            // No fsync: a session file lost in a crash costs one full handshake.
            f.write_all(out.as_bytes())?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("write --session-file {}", self.path.display()));
        }
        self.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("pg-cli-sf-{}-{}", std::process::id(), rand()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
    }

    #[test]
    fn saved_atomically_private_and_read_back() {
        let d = dir();
        let p = d.join("sess");
        let mut f = SessionFile::open(&p).unwrap();
        assert!(f.get("push.example").is_none());
        f.put("push.example", vec![1, 2, 3]);
        f.save().unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let f = SessionFile::open(&p).unwrap();
        assert_eq!(f.get("push.example"), Some(&[1u8, 2, 3][..]));
        // Nothing else was left beside it.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unsafe_files_are_refused() {
        let d = dir();
        let p = d.join("sess");
        std::fs::write(&p, "x AQID\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SessionFile::open(&p).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let link = d.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = SessionFile::open(&link).err().unwrap().to_string();
        assert!(e.contains("symlink"), "{e}");
        // Saving over a symlink replaces the link, never writes through it.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut f = SessionFile {
            path: link.clone(),
            entries: BTreeMap::new(),
            changed: false,
        };
        f.put("h", vec![9]);
        f.save().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x AQID\n");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
