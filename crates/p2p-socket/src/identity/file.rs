//! The identity file on disk: written owner-only and atomically, read with a warning when
//! others can read it, and what can go wrong with either.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::warn;

use super::IDENTITY_FILE_NAME;

#[cfg(unix)]
pub(super) fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            warn!(
                path = %path.display(),
                "the identity file can be read by other users, who could then derive your share \
                 keys; restrict it with `chmod 600 {}`",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
pub(super) fn warn_if_readable_by_others(_path: &Path) {}

/// Removes a temporary file when dropped, so no failure path leaves one behind.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // The file may already be gone; there is nothing useful to do about other failures.
        let _ = fs::remove_file(&self.0);
    }
}

/// Writes `contents` to a new owner-only file at `path`, failing if `path` exists.
pub(super) fn create_new_private_file(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let write_error = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let already_exists = || IdentityError::AlreadyExists {
        path: path.to_path_buf(),
    };
    // Checked up front too, so an existing identity is reported before any file is created.
    if fs::symlink_metadata(path).is_ok() {
        return Err(already_exists());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| IDENTITY_FILE_NAME.to_owned());
    let temp = TempFile(dir.join(format!(
        ".{file_name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    )));

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temp.0).map_err(write_error)?;
    #[cfg(unix)]
    {
        // The umask may have removed bits from the creation mode; make it exactly 0600 before
        // the secret goes in.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_error)?;
    }
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);

    // A hard link, unlike rename, fails instead of replacing a file that appeared meanwhile.
    match fs::hard_link(&temp.0, path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Err(already_exists()),
        // Some file systems (FAT, some network mounts) have no hard links; rename is still
        // atomic there, only the window between the check above and now is unguarded.
        Err(_) => {
            if fs::symlink_metadata(path).is_ok() {
                return Err(already_exists());
            }
            fs::rename(&temp.0, path).map_err(write_error)?;
        }
    }
    drop(temp);
    #[cfg(unix)]
    {
        // Make the new directory entry durable too; failure only weakens crash safety.
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Why an identity file could not be read or created.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// There is no identity file at the path.
    #[error(
        "no identity file at {}; create one with `p2p-socket create-id` (the identity is \
         ./identity.json in the directory you run p2p-socket from)",
        path.display()
    )]
    NotFound {
        /// The path that was looked at.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read the identity file {}: {source}; check its permissions", path.display())]
    Read {
        /// The identity file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file is not the expected JSON.
    #[error(
        "{} is not a valid identity file ({source}); restore it from a backup, or move it \
         away and run `p2p-socket create-id` (a new identity changes your share keys)",
        path.display()
    )]
    Parse {
        /// The identity file.
        path: PathBuf,
        /// What the JSON parser found.
        source: serde_json::Error,
    },
    /// The file is JSON but neither identity layout.
    #[error(
        "{} is not an identity file: it has neither a \"keyPair\" (p2p-socket's identity.json, \
         see `p2p-socket create-id`) nor \"publicKey\" and \"secretKey\" (hypertele's identity \
         file)",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A key in the file is not a hex key of the right length.
    #[error(
        "the {field} in {} is damaged: {reason}; restore the file from a backup, or move it \
         away and run `p2p-socket create-id` (a new identity changes your share keys)",
        path.display()
    )]
    InvalidField {
        /// The identity file.
        path: PathBuf,
        /// The JSON field (`publicKey` or `secretKey`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The public and secret key in the file do not belong together.
    #[error(
        "the publicKey and secretKey in {} do not belong together, so the file is damaged; \
         restore it from a backup, or move it away and run `p2p-socket create-id` (a new \
         identity changes your share keys)",
        path.display()
    )]
    Inconsistent {
        /// The identity file.
        path: PathBuf,
    },
    /// `create-id` found an identity file already there.
    #[error(
        "{} already exists; refusing to overwrite it, because a new identity changes every \
         share key derived from it. Keep using it, or move it away first if you really want a \
         new identity",
        path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The npm rule would leave too little of the identity's secret in a share key.
    #[error(
        "the npm-compatible share key for {service} keeps only {secret_bits} bits of the \
         identity's secret (it is cut after 32 bytes of \"host:port:secret\"), fewer than the \
         {min} needed: anyone who knows the host and port could derive its secret key and \
         impersonate this share. Derive the key from the whole secret instead (a new key: \
         peers that have the old one need the new one), or keep the npm key knowingly",
        min = super::MIN_NPM_SHARE_KEY_SECRET_BITS
    )]
    WeakShareKey {
        /// The shared `host:port`.
        service: String,
        /// The bits of secret the npm rule keeps.
        secret_bits: u32,
    },
    /// The new identity file could not be written.
    #[error(
        "cannot write the identity file {}: {source}; check that the directory exists and is \
         writable",
        path.display()
    )]
    Write {
        /// The identity file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}
