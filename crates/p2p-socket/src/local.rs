//! The local end of a tunnel: the service a share forwards to and the place a connect listens,
//! each a TCP address or (on Unix) a Unix socket, as hypertele's `-u`.
//!
//! A connect's Unix socket is a file in someone's directory, so it is handled with care: a file
//! that is not a socket is never replaced, a socket something still listens on is left alone
//! (only a stale one, whose listener is gone, is removed), ours is created with the mode asked
//! (owner-only by default) before anyone can connect, and removed when we stop.

use std::fmt;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};
use crate::local_shared::SharedIo;

/// What a share forwards its connections to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Service {
    /// A TCP service.
    Tcp {
        /// Its host (a name or an address).
        host: String,
        /// Its port.
        port: u16,
    },
    /// A service listening on a Unix socket.
    #[cfg(unix)]
    Unix(PathBuf),
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Tcp { host, port } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Service::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The file mode of a connect's Unix socket unless told otherwise: only its owner may connect.
#[cfg(unix)]
pub const DEFAULT_UNIX_MODE: u32 = 0o600;

/// Where a connect listens for local programs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Listen {
    /// A TCP address; port 0 picks a free port.
    Tcp(SocketAddr),
    /// A Unix socket at `path`, created with file mode `mode` (see [`DEFAULT_UNIX_MODE`]).
    #[cfg(unix)]
    Unix {
        /// Where the socket file goes.
        path: PathBuf,
        /// Its permission bits, for example `0o600`.
        mode: u32,
    },
}

/// How long to wait for a local service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A local connection, TCP or Unix: all the pipe needs is bytes both ways, a half-close, and
/// a way to fail.
pub(crate) trait LocalIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Makes dropping the connection reset it (a TCP RST) instead of ending it (FIN): the
    /// tunnel failed, and the program on the other end must see an error, not a clean end of
    /// data it could take for a complete transfer. A Unix socket has no reset: it just ends.
    fn reset_on_drop(&self) {}

    /// The connection as one socket for two tasks ([`crate::local_shared`]).
    fn into_shared(self: Box<Self>) -> Arc<dyn SharedIo>;
}

impl LocalIo for TcpStream {
    fn reset_on_drop(&self) {
        SharedIo::reset_on_drop(self);
    }

    fn into_shared(self: Box<Self>) -> Arc<dyn SharedIo> {
        Arc::new(*self)
    }
}

#[cfg(unix)]
impl LocalIo for tokio::net::UnixStream {
    fn into_shared(self: Box<Self>) -> Arc<dyn SharedIo> {
        Arc::new(*self)
    }
}

pub(crate) type LocalStream = Box<dyn LocalIo>;

/// Opens a connection to `service`; the error says what to check.
pub(crate) async fn connect_service(service: &Service) -> std::result::Result<LocalStream, String> {
    let connecting = async {
        Ok::<LocalStream, std::io::Error>(match service {
            Service::Tcp { host, port } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
            #[cfg(unix)]
            Service::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    };
    match tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!(
            "the shared service {service} refused the connection ({e})"
        )),
        Err(_) => Err(format!(
            "the shared service {service} did not accept within {}s",
            SERVICE_CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// A bound local listener of a connect.
pub(crate) enum LocalListener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, SocketFile),
}

impl LocalListener {
    pub(crate) async fn bind(listen: &Listen) -> Result<LocalListener> {
        match listen {
            Listen::Tcp(addr) => TcpListener::bind(addr)
                .await
                .map(LocalListener::Tcp)
                .map_err(|source| Error::Bind {
                    addr: addr.to_string(),
                    source,
                }),
            #[cfg(unix)]
            Listen::Unix { path, mode } => {
                let (listener, file) = bind_unix(path, *mode)?;
                Ok(LocalListener::Unix(listener, file))
            }
        }
    }

    /// The TCP address it listens on; none for a Unix socket.
    pub(crate) fn local_addr(&self) -> Result<Option<SocketAddr>> {
        Ok(match self {
            LocalListener::Tcp(l) => Some(l.local_addr()?),
            #[cfg(unix)]
            LocalListener::Unix(..) => None,
        })
    }

    /// Where it listens, as [`Event::Listening`](crate::Event::Listening) says.
    pub(crate) fn describe(&self) -> Result<String> {
        Ok(match self {
            LocalListener::Tcp(l) => l.local_addr()?.to_string(),
            #[cfg(unix)]
            LocalListener::Unix(_, file) => format!("unix:{}", file.path.display()),
        })
    }

    /// The next local connection, and who made it, for the log.
    pub(crate) async fn accept(&self) -> std::io::Result<(LocalStream, String)> {
        match self {
            LocalListener::Tcp(l) => {
                let (tcp, from) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((Box::new(tcp), from.to_string()))
            }
            #[cfg(unix)]
            LocalListener::Unix(l, file) => {
                let (unix, _) = l.accept().await?;
                Ok((Box::new(unix), format!("unix:{}", file.path.display())))
            }
        }
    }
}

/// Our socket file: removed when dropped, if it is still ours (someone may have replaced it).
#[cfg(unix)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a Unix socket at `path` with `mode`, without ever replacing a file that is not a
/// stale socket, and without a moment in which the socket exists with looser permissions: it
/// is bound in a private directory beside `path`, given its mode there, and hard-linked into
/// place (a link never replaces an existing file, unlike a rename).
#[cfg(unix)]
fn bind_unix(path: &Path, mode: u32) -> Result<(tokio::net::UnixListener, SocketFile)> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    let fail = |why: String| Error::UnixSocket {
        path: path.to_path_buf(),
        why,
    };
    remove_if_stale(path).map_err(fail)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = dir.join(format!(
        ".p2p-socket-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| fail(format!("cannot create a directory beside it ({e})")))?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)
            .map_err(|e| format!("cannot bind a socket beside it ({e})"))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set its mode {mode:o} ({e})"))?;
        std::fs::hard_link(&staged, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                "another program created it meanwhile; it is left alone".to_string()
            }
            _ => format!("cannot create it ({e})"),
        })?;
        Ok::<_, String>(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    let listener = bound.map_err(fail)?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// Removes `path` if it is a socket nothing listens on (left by a program that died); refuses
/// anything else that is there.
#[cfg(unix)]
fn remove_if_stale(path: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot look at it ({e})")),
    };
    if !meta.file_type().is_socket() {
        return Err(
            "a file that is not a socket is there; it is left alone: remove it or choose another path"
                .into(),
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err("another program listens on it; stop it or choose another path".into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket there ({e})"))?;
            tracing::info!(path = %path.display(), "removed a stale socket nothing listened on");
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot tell whether something listens on the socket there ({e}); remove it or choose another path"
        )),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "p2p-socket-local-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn listen(path: &Path, mode: u32) -> Listen {
        Listen::Unix {
            path: path.to_path_buf(),
            mode,
        }
    }

    #[tokio::test]
    async fn creates_with_the_mode_and_removes_on_drop() {
        let dir = temp_dir("mode");
        let path = dir.join("s.sock");
        let listener = LocalListener::bind(&listen(&path, DEFAULT_UNIX_MODE))
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // It is reachable through the linked name.
        tokio::net::UnixStream::connect(&path).await.unwrap();
        listener.accept().await.unwrap();
        // Nothing of the staging is left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        drop(listener);
        assert!(!path.exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[tokio::test]
    async fn refuses_a_file_that_is_not_a_socket() {
        let dir = temp_dir("file");
        let path = dir.join("precious.txt");
        std::fs::write(&path, b"keep me").unwrap();
        let e = LocalListener::bind(&listen(&path, 0o600))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn refuses_a_socket_in_use_and_replaces_a_stale_one() {
        let dir = temp_dir("stale");
        let path = dir.join("s.sock");
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = LocalListener::bind(&listen(&path, 0o600))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("another program listens"), "{e}");
        drop(other); // its file stays: a stale socket
        assert!(path.exists());
        let ours = LocalListener::bind(&listen(&path, 0o600)).await.unwrap();
        tokio::net::UnixStream::connect(&path).await.unwrap();
        drop(ours);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A socket someone put in our place after we bound is theirs: stopping leaves it.
    #[tokio::test]
    async fn leaves_a_replacement_alone() {
        let dir = temp_dir("replaced");
        let path = dir.join("s.sock");
        let ours = LocalListener::bind(&listen(&path, 0o600)).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
