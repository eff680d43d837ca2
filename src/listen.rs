//! The two listening ports' sockets: a TCP address or a Unix domain socket (`unix:/path`), bound
//! from [`Listen`], and the one stream type both servers accept.
//!
//! A Unix socket's file mode is the sidecar's natural access control: only processes of the
//! owner (and group, by default) can connect. A stale socket file left by a crash is replaced; any
//! other file at the path is refused, never removed. The socket file is removed when the
//! listener is dropped.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

use crate::config::Listen;

/// An accepted connection: TCP or a Unix socket.
#[cfg(unix)]
pub type Stream = tokio_util::either::Either<TcpStream, UnixStream>;
#[cfg(not(unix))]
pub type Stream = tokio_util::either::Either<TcpStream, TcpStream>;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixSocket),
}

/// A bound Unix socket listener and its path, removed on drop.
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

#[cfg(unix)]
impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where a listener is, for the ready line and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Listener {
    /// Binds `listen`. A Unix socket gets `mode` before anyone can connect to it.
    pub async fn bind(listen: &Listen) -> io::Result<Self> {
        match listen {
            Listen::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            #[cfg(unix)]
            Listen::Unix { path, mode } => bind_unix(path, *mode).map(Self::Unix),
            #[cfg(not(unix))]
            Listen::Unix { .. } => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "unix sockets need a Unix system",
            )),
        }
    }

    /// Where it listens.
    pub fn local(&self) -> io::Result<LocalAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(LocalAddr::Tcp),
            #[cfg(unix)]
            Self::Unix(socket) => Ok(LocalAddr::Unix(socket.path.clone())),
        }
    }

    /// The TCP address (an error for a Unix socket).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr(),
            #[cfg(unix)]
            Self::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a unix socket has no TCP address",
            )),
        }
    }

    /// Accepts one connection. TCP connections get `TCP_NODELAY` (requests and responses are
    /// written whole).
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Stream::Left(stream))
            }
            #[cfg(unix)]
            Self::Unix(socket) => {
                let (stream, _) = socket.listener.accept().await?;
                Ok(Stream::Right(stream))
            }
        }
    }
}

#[cfg(unix)]
fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixSocket> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A live server still answering on it is not ours to replace.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way (not removed)",
            ))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    // Bind inside a fresh private directory, set the mode, then rename into place: nobody can
    // connect between bind and chmod.
    let parent = path.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".hooksign-sock")
        .tempdir_in(parent)?;
    let staged = staging.path().join("s");
    let listener = UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&staged, path)?;
    Ok(UnixSocket {
        listener,
        path: path.to_owned(),
    })
}
