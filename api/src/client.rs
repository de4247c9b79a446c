//! Connecting to a meta service: a channel with timeouts and a bearer-token interceptor, and
//! typed clients for its services.

use std::time::Duration;

use crate::AUTHORIZATION;
use crate::meta::{
    admin_client::AdminClient, changelog_client::ChangelogClient, fs_client::FsClient,
    replication_client::ReplicationClient,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message a meta service or its clients accept or send (snapshots and readdir
/// pages are chunked well below this).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid meta service address {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the meta service at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the token contains characters that cannot be sent in a header")]
    BadToken,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Result<Self, ClientError> {
        format!("Bearer {}", token.trim())
            .parse()
            .map(Bearer)
            .map_err(|_| ClientError::BadToken)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Connects to `url` (e.g. `http://127.0.0.1:7400`), failing within `timeout` if unreachable.
pub async fn connect(url: &str, timeout: Duration) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: url.to_owned(),
            reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        })
}

pub fn fs(channel: Channel, token: &str) -> Result<FsClient<Authed>, ClientError> {
    Ok(FsClient::with_interceptor(channel, Bearer::new(token)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

pub fn admin(channel: Channel, token: &str) -> Result<AdminClient<Authed>, ClientError> {
    Ok(AdminClient::with_interceptor(channel, Bearer::new(token)?))
}

pub fn changelog(channel: Channel, token: &str) -> Result<ChangelogClient<Authed>, ClientError> {
    Ok(
        ChangelogClient::with_interceptor(channel, Bearer::new(token)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}

pub fn replication(
    channel: Channel,
    token: &str,
) -> Result<ReplicationClient<Authed>, ClientError> {
    Ok(ReplicationClient::with_interceptor(
        channel,
        Bearer::new(token)?,
    ))
}
