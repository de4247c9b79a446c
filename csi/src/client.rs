//! Connecting to a CSI endpoint as a CO does: `unix:///path/csi.sock` (or a bare path), giving a
//! tonic channel for the generated `IdentityClient`, `ControllerClient` and `NodeClient`.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Why a CSI endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "invalid CSI endpoint {0:?}: expected unix:///path/to/csi.sock (CSI uses Unix sockets only)"
    )]
    BadEndpoint(String),
    #[error("cannot connect to the CSI socket {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
}

/// The socket path of an endpoint: `unix:///a/b.sock`, `unix:/a/b.sock` or `/a/b.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConnectError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.is_empty() || !path.starts_with('/') || path.contains('\0') {
        return Err(ConnectError::BadEndpoint(endpoint.to_owned()));
    }
    Ok(PathBuf::from(path))
}

/// Connects to the Unix socket of `endpoint`, failing within `timeout`.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    let path = socket_path(endpoint)?;
    let p = path.clone();
    // The URI is required by tonic but never used: the connector dials the socket.
    Endpoint::from_static("http://csi.invalid")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(p).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ConnectError::Unreachable {
            path,
            reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").ok(),
            Some(PathBuf::from("/csi/csi.sock"))
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").ok(),
            Some(PathBuf::from("/csi/csi.sock"))
        );
        assert_eq!(socket_path("/x.sock").ok(), Some(PathBuf::from("/x.sock")));
        for bad in [
            "",
            "unix://",
            "tcp://1.2.3.4:5",
            "relative.sock",
            "unix://a\0b",
        ] {
            assert!(socket_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
