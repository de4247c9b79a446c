//! The etcd engine: the metadata keyspace in an etcd cluster (v3 API), so that the metadata
//! survives the loss of a machine and several meta services can share it.
//!
//! The etcd cluster must be dedicated to one mirrorfs cluster: the engine's revisions are
//! etcd's own, offset by a base, so a foreign write would show up as a gap (the watch stream
//! then fails with [`EngineError::Corrupt`] naming the revision).
//!
//! Layout under the configured prefix `P` (default `mirrorfs/`):
//! - `P d/<key>`: the engine's keys, values stored as they are;
//! - `P e/base`: written once by the first engine to connect; its etcd `mod_revision` `B` is
//!   the engine's revision 0, so engine revision `r` is etcd revision `B + r`;
//! - `P e/commit`: rewritten by every transaction with its proposed commit time and its
//!   mutations, in the changelog encoding shared with the embedded engine. This makes every
//!   successful transaction exactly one etcd revision (also one without mutations), and the
//!   changelog is the history of this one key: [`Engine::watch`] watches it and decodes each
//!   version into a [`ChangeEntry`], so the mutations come back exactly as committed (a
//!   `DeleteRange` stays one mutation);
//! - `P e/time`: the commit time of the latest revision (see below).
//!
//! Transactions are mapped to one etcd transaction: compares on `mod_revision` (revision 0,
//! "absent", becomes `version == 0`), then the mutations folded into their net effect (etcd
//! refuses a transaction that writes one key twice or puts into a range it deletes), then the
//! commit record and the time step below. etcd's request limits (`--max-txn-ops`,
//! `--max-request-bytes`) are checked before sending, against [`EtcdOptions`], with a message
//! saying how to raise them. Nothing else guards a transaction: independent transactions, from
//! one process or several, commit concurrently and etcd orders them, so a transaction that does
//! not commit is always a real [`TxnOutcome::Conflict`].
//!
//! Commit times. A process proposes the wall clock, never below the latest time it has written
//! or seen, so its own proposals never go back. Concurrent commits can still land in another
//! order than their proposals (or come from a process whose clock is ahead), so the proposal
//! alone would make times go back along the changelog. Hence `P e/time`: an 8-byte big-endian
//! time that every transaction raises to its proposal in the same etcd revision (a nested
//! transaction: if the stored value is greater, read it, else write the proposal). `P e/time` at
//! etcd revision `B + r` is therefore the largest proposal up to revision `r`, and that is the
//! commit time of `r`, wherever it is read: [`Commit::time`] (the proposal, or the larger value
//! the nested transaction read), [`Engine::head`] and [`Engine::snapshot`] (read with the commit
//! record, at one revision), and [`Engine::watch`] (the records' proposals, clamped by a running
//! maximum that starts from `P e/time` just before the first revision watched). So every reader
//! sees the same time for a revision, and times never decrease along the changelog. A time is
//! the committing process's clock, except that it is raised to an earlier revision's time when
//! that one is later (by the few milliseconds of a reordering, or by the skew of a fast clock).
//!
//! Reads (get, range, head, snapshot pages) are retried a few times on connection errors, so
//! that a client fails over to the remaining members when one dies; commits are not retried
//! here (one may have landed): they fail with [`EngineError::Unavailable`] for the caller.
//!
//! Compaction is etcd's: `compact(r)` compacts etcd at `B + r`, and the compaction point is
//! etcd's own, found at connect time with a binary search of ranges at old revisions and kept
//! current by this engine's compactions and by the compaction notices of etcd watches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions,
    DeleteOptions, GetOptions, Identity, KvClient, TlsOptions, Txn as EtcdTxn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use mirrorfs_api::Revision;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::record;
use super::{
    ChangeEntry, ChangeStream, Commit, CommitTime, Compare, Engine, EngineError, Head, KeyValue,
    Mutation, Result, Snapshot, Txn, TxnOutcome,
};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Keys per page of ranges and snapshots.
const PAGE: usize = 1024;
/// Snapshot chunks read ahead of the consumer.
const SNAPSHOT_AHEAD: usize = 4;
/// Changelog entries buffered ahead of a watcher.
const WATCH_AHEAD: usize = 512;
/// Largest gRPC message accepted from etcd (whole watch responses carry large commit records).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Attempts of a read on connection errors (the client moves on to another member).
const READ_ATTEMPTS: u32 = 6;
/// Room for gRPC and protobuf framing when estimating a request's size.
const REQUEST_OVERHEAD: usize = 16;

/// TLS material for the connection to etcd, as PEM.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    /// CA bundle that signed the etcd servers' certificates (`None`: the system roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach and use the etcd cluster.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Prefix of every key this engine writes (see the module docs).
    pub prefix: Vec<u8>,
    /// The etcd servers' `--max-txn-ops`; larger transactions are refused before sending.
    pub max_txn_ops: usize,
    /// The etcd servers' `--max-request-bytes`; larger transactions are refused before sending.
    pub max_request_bytes: usize,
    /// User name and password, for etcd's authentication.
    pub user: Option<(String, String)>,
    /// TLS; endpoints without a scheme then use `https://`.
    pub tls: Option<EtcdTls>,
    /// How long to wait for a connection to an endpoint.
    pub connect_timeout: Duration,
    /// How long a single request may take.
    pub request_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            prefix: b"mirrorfs/".to_vec(),
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The etcd engine. See the module docs.
pub struct EtcdEngine {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    /// The endpoints, for error messages.
    endpoints: String,
    options: EtcdOptions,
    data_prefix: Vec<u8>,
    commit_key: Vec<u8>,
    /// `P e/time`, the commit time of the latest revision.
    time_key: Vec<u8>,
    /// etcd revision of engine revision 0.
    base: i64,
    /// The latest commit time this process has proposed or read: the floor of its proposals.
    last_time: AtomicU64,
    /// The compaction point (engine revision) as far as this process knows.
    compacted: AtomicU64,
}

impl EtcdEngine {
    /// Connects to the etcd cluster at `endpoints` (`host:port` or URLs) and initialises the
    /// engine's keys on first use. An unreachable cluster gives [`EngineError::Unavailable`]
    /// naming the endpoints.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self> {
        let names = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(EngineError::Invalid(
                "no etcd endpoints given; name at least one host:port".into(),
            ));
        }
        let scheme = if options.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}{e}")
                }
            })
            .collect();
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &options.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity_pem {
                t = t.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(t);
        }
        let client = Client::connect(&urls, Some(connect))
            .await
            .map_err(|e| failed(&names, &options, "connecting", &e))?;
        let mut data_prefix = options.prefix.clone();
        data_prefix.extend_from_slice(b"d/");
        let mut commit_key = options.prefix.clone();
        commit_key.extend_from_slice(b"e/commit");
        let mut time_key = options.prefix.clone();
        time_key.extend_from_slice(b"e/time");
        let mut base_key = options.prefix.clone();
        base_key.extend_from_slice(b"e/base");

        let mut shared = Shared {
            client,
            endpoints: names,
            options,
            data_prefix,
            commit_key,
            time_key,
            base: 0,
            last_time: AtomicU64::new(0),
            compacted: AtomicU64::new(0),
        };
        shared.base = shared.initialise(&base_key).await?;
        let compacted = shared.find_compacted(&base_key).await?;
        shared.compacted.store(compacted.0, Ordering::Relaxed);
        // Reading the head raises this process's floor to the latest commit time.
        shared.read_head().await?;
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// The etcd revision that is this engine's revision 0.
    pub fn base_revision(&self) -> i64 {
        self.shared.base
    }
}

impl Shared {
    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// A read, retried on connection errors.
    async fn read<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut attempt = 1;
        loop {
            match f(self.kv()).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < READ_ATTEMPTS && is_transient(&e) => {
                    tracing::debug!(error = %e, attempt, "etcd read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.err(what, e)),
            }
        }
    }

    fn err(&self, what: &str, e: etcd_client::Error) -> EngineError {
        if let etcd_client::Error::GRpcStatus(status) = &e {
            let message = status.message();
            if message.contains("too many operations") {
                return EngineError::Invalid(format!(
                    "etcd at {} refused {what}: {message}; raise --max-txn-ops on every etcd member (and --etcd-max-txn-ops to match)",
                    self.endpoints
                ));
            }
            if message.contains("request is too large")
                || status.code() == tonic::Code::ResourceExhausted
            {
                return EngineError::Invalid(format!(
                    "etcd at {} refused {what}: {message}; raise --max-request-bytes on every etcd member (and --etcd-max-request-bytes to match)",
                    self.endpoints
                ));
            }
        }
        failed(&self.endpoints, &self.options, what, &e)
    }

    fn dkey(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.data_prefix.len() + key.len());
        k.extend_from_slice(&self.data_prefix);
        k.extend_from_slice(key);
        k
    }

    fn revision(&self, etcd: i64) -> Revision {
        Revision(u64::try_from(etcd - self.base).unwrap_or(0))
    }

    fn etcd_revision(&self, r: Revision) -> i64 {
        self.base
            .saturating_add(i64::try_from(r.0).unwrap_or(i64::MAX))
    }

    fn corrupt(&self, what: impl std::fmt::Display, detail: impl Into<String>) -> EngineError {
        EngineError::Corrupt {
            location: format!("etcd at {} ({what})", self.endpoints),
            detail: detail.into(),
        }
    }

    /// Writes `P e/base` if it is missing; returns its etcd revision.
    async fn initialise(&self, base_key: &[u8]) -> Result<i64> {
        let txn = EtcdTxn::new()
            .when([EtcdCompare::version(base_key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(base_key, b"mirrorfs engine v1".to_vec(), None)])
            .or_else([TxnOp::get(base_key, None)]);
        let resp = self
            .kv()
            .txn(txn)
            .await
            .map_err(|e| self.err("initialising the engine", e))?;
        if resp.succeeded() {
            return header_revision(&resp.header().cloned(), self);
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                if kv.value() != b"mirrorfs engine v1" {
                    return Err(self.corrupt(
                        String::from_utf8_lossy(base_key),
                        format!(
                            "unexpected engine marker {:?}; is this prefix used by another application?",
                            String::from_utf8_lossy(kv.value())
                        ),
                    ));
                }
                return Ok(kv.mod_revision());
            }
        }
        Err(self.corrupt(
            String::from_utf8_lossy(base_key),
            "the engine marker vanished while connecting",
        ))
    }

    /// etcd's compaction point as an engine revision: a binary search for the oldest revision at
    /// which a range still works (a handful of small requests, once per connect).
    async fn find_compacted(&self, base_key: &[u8]) -> Result<Revision> {
        let resp = self
            .kv()
            .get(base_key, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| self.err("reading the head", e))?;
        let current = header_revision(&resp.header().cloned(), self)?;
        let readable = |rev: i64| {
            let mut kv = self.kv();
            let key = base_key.to_vec();
            async move {
                match kv
                    .get(
                        key,
                        Some(GetOptions::new().with_count_only().with_revision(rev)),
                    )
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if is_compacted(&e) => Ok(false),
                    Err(e) => Err(self.err("finding the compaction point", e)),
                }
            }
        };
        if readable(self.base).await? {
            return Ok(Revision(0));
        }
        // Invariant: `lo` is compacted away, `hi` is readable.
        let (mut lo, mut hi) = (self.base, current);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if readable(mid).await? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(self.revision(hi))
    }

    /// The time to propose for a new commit: the wall clock, never below a time this process
    /// has proposed or read.
    fn propose_time(&self) -> CommitTime {
        let now = CommitTime::now().0;
        CommitTime(self.last_time.fetch_max(now, Ordering::Relaxed).max(now))
    }

    fn saw_time(&self, time: CommitTime) {
        self.last_time.fetch_max(time.0, Ordering::Relaxed);
    }

    fn note_compacted(&self, etcd_compact: i64) {
        self.compacted
            .fetch_max(self.revision(etcd_compact).0, Ordering::Relaxed);
    }

    /// Up to `limit` pairs of `[start, end)` (etcd keys) at etcd revision `at` (0: latest),
    /// paged. Returns the pairs and the etcd revision read.
    async fn range_at(
        &self,
        start: Vec<u8>,
        end: &[u8],
        limit: usize,
        at: i64,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut out = Vec::new();
        let mut start = start;
        let mut at = at;
        loop {
            let page = (limit - out.len()).min(PAGE * 16);
            let mut opts = GetOptions::new()
                .with_range(end.to_vec())
                .with_limit(i64::try_from(page).unwrap_or(i64::MAX));
            if at != 0 {
                opts = opts.with_revision(at);
            }
            let mut resp = self
                .read("reading a range", |mut kv| {
                    let (start, opts) = (start.clone(), opts.clone());
                    async move { kv.get(start, Some(opts)).await }
                })
                .await?;
            if at == 0 {
                at = header_revision(&resp.header().cloned(), self)?;
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else {
                return Ok((out, at));
            };
            start = last.key().to_vec();
            start.push(0);
            for kv in kvs {
                out.push(self.pair(kv)?);
            }
            if !more || out.len() >= limit {
                return Ok((out, at));
            }
        }
    }

    fn pair(&self, kv: etcd_client::KeyValue) -> Result<KeyValue> {
        let mod_revision = self.revision(kv.mod_revision());
        let (key, value) = kv.into_key_value();
        let Some(key) = key.strip_prefix(self.data_prefix.as_slice()) else {
            return Err(self.corrupt(
                "a range",
                format!("key {} is outside the data prefix", key.escape_ascii()),
            ));
        };
        Ok(KeyValue {
            key: key.to_vec(),
            value,
            mod_revision,
        })
    }

    /// The latest commit: its engine revision and time (0, 0 if none), and the etcd revision
    /// of the read.
    async fn read_head(&self) -> Result<(Revision, CommitTime, i64)> {
        self.read_commit(0).await
    }

    /// The commit record and `P e/time` at etcd revision `at` (0: the latest), read together:
    /// the engine revision and commit time of the latest commit up to `at` (0, 0 if none), and
    /// the etcd revision read. The time is the larger of the two, so that a cluster written
    /// before `P e/time` existed reads as before.
    async fn read_commit(&self, at: i64) -> Result<(Revision, CommitTime, i64)> {
        let mut end = self.time_key.clone();
        end.push(0);
        let mut opts = GetOptions::new().with_range(end);
        if at != 0 {
            opts = opts.with_revision(at);
        }
        let resp = self
            .read("reading the head", |mut kv| {
                let (key, opts) = (self.commit_key.clone(), opts.clone());
                async move { kv.get(key, Some(opts)).await }
            })
            .await?;
        let read_at = header_revision(&resp.header().cloned(), self)?;
        let (mut revision, mut time) = (Revision(0), CommitTime(0));
        for kv in resp.kvs() {
            if kv.key() == self.commit_key {
                revision = self.revision(kv.mod_revision());
                let (t, _) = record::decode(kv.value()).map_err(|d| {
                    self.corrupt(format_args!("commit record at revision {revision}"), d)
                })?;
                time = time.max(t);
            } else if kv.key() == self.time_key {
                time = time.max(self.decode_time(kv.value())?);
            }
        }
        self.saw_time(time);
        Ok((revision, time, read_at))
    }

    fn decode_time(&self, raw: &[u8]) -> Result<CommitTime> {
        let raw: [u8; 8] = raw.try_into().map_err(|_| {
            self.corrupt(
                String::from_utf8_lossy(&self.time_key),
                format!("a commit time of {} bytes instead of 8", raw.len()),
            )
        })?;
        Ok(CommitTime(u64::from_be_bytes(raw)))
    }

    /// Checks `txn` against the configured etcd limits and builds the etcd transaction.
    fn build(&self, txn: &Txn, time: CommitTime) -> Result<EtcdTxn> {
        let ops = net_effect(&txn.mutations);
        let record = record::encode(time, &txn.mutations);
        // The mutations, the commit record and the time step.
        let n_ops = ops.len() + 2;
        let limit = self.options.max_txn_ops;
        if n_ops > limit || txn.compares.len() + 1 > limit {
            return Err(EngineError::Invalid(format!(
                "a transaction of {n_ops} operations and {} compares exceeds the etcd limit of {limit} per transaction (etcd at {}); raise --max-txn-ops on every etcd member and pass the same value with --etcd-max-txn-ops",
                txn.compares.len(),
                self.endpoints
            )));
        }
        let mut bytes =
            record.len() + self.commit_key.len() + 3 * (self.time_key.len() + 8 + REQUEST_OVERHEAD);
        let mut compares = Vec::with_capacity(txn.compares.len());
        for c in &txn.compares {
            match c {
                Compare::ModRevision { key, revision } => {
                    let k = self.dkey(key);
                    bytes += k.len() + REQUEST_OVERHEAD;
                    compares.push(if revision.0 == 0 {
                        EtcdCompare::version(k, CompareOp::Equal, 0)
                    } else {
                        EtcdCompare::mod_revision(
                            k,
                            CompareOp::Equal,
                            self.etcd_revision(*revision),
                        )
                    });
                }
            }
        }
        let mut etcd_ops = Vec::with_capacity(n_ops);
        for op in ops {
            match op {
                NetOp::Put(k, v) => {
                    let k = self.dkey(&k);
                    bytes += k.len() + v.len() + REQUEST_OVERHEAD;
                    etcd_ops.push(TxnOp::put(k, v, None));
                }
                NetOp::Delete(k) => {
                    let k = self.dkey(&k);
                    bytes += k.len() + REQUEST_OVERHEAD;
                    etcd_ops.push(TxnOp::delete(k, None));
                }
                NetOp::DeleteRange(s, e) => {
                    let (s, e) = (self.dkey(&s), self.dkey(&e));
                    bytes += s.len() + e.len() + REQUEST_OVERHEAD;
                    etcd_ops.push(TxnOp::delete(s, Some(DeleteOptions::new().with_range(e))));
                }
            }
        }
        let max = self.options.max_request_bytes;
        if bytes > max {
            return Err(EngineError::Invalid(format!(
                "a transaction of about {bytes} bytes (its writes plus the changelog record of them) exceeds the etcd request limit of {max} bytes (etcd at {}); raise --max-request-bytes on every etcd member and pass the same value with --etcd-max-request-bytes",
                self.endpoints
            )));
        }
        etcd_ops.push(TxnOp::put(self.commit_key.clone(), record, None));
        // Raise `P e/time` to `time`, or read the later time it holds (a missing key fails the
        // value compare, so the first commit writes it).
        let encoded = time.0.to_be_bytes().to_vec();
        let time_step = EtcdTxn::new()
            .when([EtcdCompare::value(
                self.time_key.clone(),
                CompareOp::Greater,
                encoded.clone(),
            )])
            .and_then([TxnOp::get(self.time_key.clone(), None)])
            .or_else([TxnOp::put(self.time_key.clone(), encoded, None)]);
        etcd_ops.push(TxnOp::txn(time_step));
        Ok(EtcdTxn::new().when(compares).and_then(etcd_ops))
    }

    /// The commit time of a transaction that committed with proposal `time`: the later time
    /// its time step read, if it read one.
    fn committed_time(
        &self,
        resp: &etcd_client::TxnResponse,
        time: CommitTime,
    ) -> Result<CommitTime> {
        for op in resp.op_responses() {
            if let TxnOpResponse::Txn(step) = op
                && step.succeeded()
            {
                for op in step.op_responses() {
                    if let TxnOpResponse::Get(get) = op
                        && let Some(kv) = get.kvs().first()
                    {
                        return Ok(time.max(self.decode_time(kv.value())?));
                    }
                }
            }
        }
        Ok(time)
    }
}

fn header_revision(header: &Option<etcd_client::ResponseHeader>, s: &Shared) -> Result<i64> {
    header
        .as_ref()
        .map(|h| h.revision())
        .ok_or_else(|| s.corrupt("a response", "etcd sent no response header"))
}

/// Errors after which another attempt (maybe on another member) can succeed.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

/// `e` with its causes: a transport error's causes say what TLS disliked.
fn describe(e: &etcd_client::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let m = cause.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        source = cause.source();
    }
    out
}

/// The error for a failed request: refused credentials and permissions (which a retry cannot
/// fix) are [`EngineError::Invalid`] saying which setting to check; anything else is
/// [`EngineError::Unavailable`], with a hint about TLS when the connection failed in it.
fn failed(
    endpoints: &str,
    options: &EtcdOptions,
    what: &str,
    e: &etcd_client::Error,
) -> EngineError {
    let user = options.user.as_ref().map(|(u, _)| u.as_str());
    if let etcd_client::Error::GRpcStatus(status) = e {
        let message = status.message();
        let code = status.code();
        if code == tonic::Code::Unauthenticated
            || message.contains("authentication failed")
            || message.contains("invalid auth token")
            || message.contains("user name is empty")
        {
            let who = match user {
                Some(u) => format!("user {u:?}"),
                None => "a client without a user name".into(),
            };
            return EngineError::Invalid(format!(
                "etcd at {endpoints} did not authenticate {who} while {what} (unauthenticated: {message}); check --etcd-user and --etcd-password-file"
            ));
        }
        if code == tonic::Code::PermissionDenied || message.contains("permission denied") {
            return EngineError::Invalid(format!(
                "etcd at {endpoints} denied {what} to user {:?} (permission denied: {message}); grant its role read-write access to the keys under {:?}",
                user.unwrap_or(""),
                String::from_utf8_lossy(&options.prefix)
            ));
        }
    }
    let detail = describe(e);
    let lower = detail.to_ascii_lowercase();
    let hint = if ["certificate", "tls", "handshake", "unknownissuer", "x509"]
        .iter()
        .any(|w| lower.contains(w))
    {
        "the TLS handshake failed: check the CA bundle (--etcd-ca-file), the client certificate \
         (--etcd-cert-file, --etcd-key-file) and that the server certificates name the endpoint \
         hosts"
    } else if ["connection reset", "broken pipe", "connection closed"]
        .iter()
        .any(|w| lower.contains(w))
    {
        match &options.tls {
            Some(tls) if tls.identity_pem.is_none() => {
                "the server closed the connection: if etcd runs with --client-cert-auth, give a \
                 client certificate signed by its trusted CA (--etcd-cert-file, --etcd-key-file)"
            }
            Some(_) => {
                "the server closed the connection: check that etcd trusts the CA of the client \
                 certificate (its --trusted-ca-file)"
            }
            None => {
                "the server closed the connection: check whether etcd requires TLS \
                 (--etcd-ca-file)"
            }
        }
    } else {
        "check that the etcd cluster is running and reachable"
    };
    EngineError::Unavailable(format!(
        "etcd at {endpoints} failed while {what}: {detail}; {hint}"
    ))
}

#[async_trait]
impl Engine for EtcdEngine {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let s = &*self.shared;
        let key = s.dkey(key);
        let mut resp = s
            .read("reading a key", |mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        resp.take_kvs()
            .into_iter()
            .next()
            .map(|kv| s.pair(kv))
            .transpose()
    }

    async fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let s = &*self.shared;
        Ok(s.range_at(s.dkey(start), &s.dkey(end), limit, 0).await?.0)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let s = &*self.shared;
        let proposal = s.propose_time();
        let request = s.build(&txn, proposal)?;
        let resp = s
            .kv()
            .txn(request)
            .await
            .map_err(|e| s.err("committing a transaction", e))?;
        if !resp.succeeded() {
            return Ok(TxnOutcome::Conflict);
        }
        let at = header_revision(&resp.header().cloned(), s)?;
        let time = s.committed_time(&resp, proposal)?;
        s.saw_time(time);
        Ok(TxnOutcome::Committed(Commit {
            revision: s.revision(at),
            time,
        }))
    }

    async fn head(&self) -> Result<Head> {
        let s = &*self.shared;
        let (revision, time, _) = s.read_head().await?;
        Ok(Head {
            revision,
            time,
            compacted: Revision(s.compacted.load(Ordering::Relaxed)).min(revision),
        })
    }

    async fn watch(&self, from: Revision) -> Result<ChangeStream> {
        let s = self.shared.clone();
        let compacted = Revision(s.compacted.load(Ordering::Relaxed));
        if from.0 != 0 && from <= compacted {
            return Err(EngineError::Compacted {
                requested: from,
                compacted,
            });
        }
        let from = if from.0 == 0 { compacted.next() } else { from };
        let options = WatchOptions::new().with_start_revision(s.etcd_revision(from));
        let mut attempt = 1;
        let mut stream = loop {
            let opened = s
                .client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .watch(s.commit_key.clone(), Some(options.clone()))
                .await;
            match opened {
                Ok(stream) => break stream,
                Err(e) if attempt < READ_ATTEMPTS && is_transient(&e) => {
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(s.err("opening a watch", e)),
            }
        };
        let (tx, rx) = mpsc::channel(WATCH_AHEAD);
        tokio::spawn(async move {
            let mut next = from;
            // The commit time of the entry before: unknown until the first entry, whose time is
            // read from `P e/time` at its revision (see the module docs).
            let mut last_time: Option<CommitTime> = None;
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => return,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        let e = EngineError::Unavailable(format!(
                            "etcd at {} closed the changelog watch at revision {next}; reconnect",
                            s.endpoints
                        ));
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(s.err("watching the changelog", e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    s.note_compacted(resp.compact_revision());
                    let e = EngineError::Compacted {
                        requested: next,
                        compacted: s.revision(resp.compact_revision()),
                    };
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                if resp.canceled() {
                    let e = EngineError::Unavailable(format!(
                        "etcd at {} cancelled the changelog watch at revision {next}: {}",
                        s.endpoints,
                        resp.cancel_reason()
                    ));
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let revision = s.revision(kv.mod_revision());
                    if revision < next {
                        continue;
                    }
                    let entry = if revision > next {
                        Err(s.corrupt(
                            format_args!("changelog revision {next}"),
                            format!(
                                "the next commit record is at revision {revision}; is another application writing to this etcd cluster?"
                            ),
                        ))
                    } else {
                        let floor = match last_time {
                            Some(t) => Ok(t),
                            None => s.read_commit(kv.mod_revision()).await.map(|(_, t, _)| t),
                        };
                        floor.and_then(|floor| {
                            let (time, mutations) = record::decode(kv.value()).map_err(|d| {
                                s.corrupt(format_args!("changelog revision {revision}"), d)
                            })?;
                            let time = floor.max(time);
                            last_time = Some(time);
                            Ok(ChangeEntry {
                                revision,
                                time,
                                mutations,
                            })
                        })
                    };
                    let failed = entry.is_err();
                    if tx.send(entry).await.is_err() || failed {
                        return;
                    }
                    next = revision.next();
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn compact(&self, up_to: Revision) -> Result<Revision> {
        let s = &*self.shared;
        let (head, _, _) = s.read_head().await?;
        let known = Revision(s.compacted.load(Ordering::Relaxed));
        let target = up_to.min(head);
        if target <= known {
            return Ok(known);
        }
        match s
            .kv()
            .compact(
                s.etcd_revision(target),
                Some(CompactionOptions::new().with_physical()),
            )
            .await
        {
            Ok(_) => s.note_compacted(s.etcd_revision(target)),
            // Someone compacted further already: find out how far.
            Err(e) if is_compacted(&e) => {
                let mut base_key = s.options.prefix.clone();
                base_key.extend_from_slice(b"e/base");
                let found = s.find_compacted(&base_key).await?;
                s.compacted.fetch_max(found.0, Ordering::Relaxed);
            }
            Err(e) => return Err(s.err("compacting", e)),
        }
        Ok(Revision(s.compacted.load(Ordering::Relaxed)))
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let s = self.shared.clone();
        let (revision, time, at) = s.read_head().await?;
        let (tx, rx) = mpsc::channel(SNAPSHOT_AHEAD);
        let end = crate::engine::prefix_end(&s.data_prefix);
        tokio::spawn(async move {
            let mut start = s.data_prefix.clone();
            loop {
                let page = s.range_at(start.clone(), &end, PAGE, at).await;
                let page = match page {
                    Ok((page, _)) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                start = s.dkey(&last.key);
                start.push(0);
                let full = page.len() == PAGE;
                if tx.send(Ok(page)).await.is_err() || !full {
                    return;
                }
            }
        });
        Ok(Snapshot {
            revision,
            time,
            chunks: Box::pin(ReceiverStream::new(rx)),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The net effect of a transaction's mutations

/// One etcd write. No two of a transaction's touch the same key (etcd refuses that).
#[derive(Clone, Debug, PartialEq, Eq)]
enum NetOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Folds `mutations`, applied in order, into disjoint etcd writes with the same final state.
fn net_effect(mutations: &[Mutation]) -> Vec<NetOp> {
    let mut puts: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut deletes: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut ranges: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for m in mutations {
        match m {
            Mutation::Put { key, value } => {
                puts.insert(key.clone(), value.clone());
            }
            Mutation::Delete { key } => {
                puts.remove(key);
                deletes.insert(key.clone());
            }
            Mutation::DeleteRange { start, end } => {
                if start < end {
                    puts.retain(|k, _| !(k >= start && k < end));
                    ranges.push((start.clone(), end.clone()));
                }
            }
        }
    }
    // Merge overlapping ranges.
    ranges.sort();
    let mut merged: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some((_, last_end)) if s <= *last_end => {
                if e > *last_end {
                    *last_end = e;
                }
            }
            _ => merged.push((s, e)),
        }
    }
    let covered = |k: &[u8]| {
        merged
            .iter()
            .any(|(s, e)| k >= s.as_slice() && k < e.as_slice())
    };
    let mut out = Vec::new();
    for k in deletes {
        if !puts.contains_key(&k) && !covered(&k) {
            out.push(NetOp::Delete(k));
        }
    }
    // Cut the ranges around the keys put inside them.
    for (s, e) in merged {
        let mut from = s;
        for p in puts.range(from.clone()..e.clone()).map(|(k, _)| k.clone()) {
            if from < p {
                out.push(NetOp::DeleteRange(from, p.clone()));
            }
            from = p;
            from.push(0);
        }
        if from < e {
            out.push(NetOp::DeleteRange(from, e));
        }
    }
    out.extend(puts.into_iter().map(|(k, v)| NetOp::Put(k, v)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Mutation {
        Mutation::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn records_round_trip() {
        let m = vec![
            put("a", "1"),
            Mutation::Delete { key: b"b".to_vec() },
            Mutation::DeleteRange {
                start: vec![],
                end: vec![0xff],
            },
        ];
        let raw = record::encode(CommitTime(42), &m);
        assert_eq!(record::decode(&raw), Ok((CommitTime(42), m)));
        assert!(record::decode(&raw[..raw.len() - 1]).is_err());
    }

    #[test]
    fn net_effect_never_touches_a_key_twice() {
        let ops = net_effect(&[
            put("a", "1"),
            Mutation::Delete { key: b"a".to_vec() },
            put("b", "1"),
            put("b", "2"),
            Mutation::DeleteRange {
                start: b"c".to_vec(),
                end: b"f".to_vec(),
            },
            put("d", "x"),
            Mutation::Delete { key: b"e".to_vec() },
            Mutation::DeleteRange {
                start: b"e".to_vec(),
                end: b"g".to_vec(),
            },
            Mutation::Delete { key: b"z".to_vec() },
        ]);
        assert_eq!(
            ops,
            vec![
                NetOp::Delete(b"a".to_vec()),
                NetOp::Delete(b"z".to_vec()),
                NetOp::DeleteRange(b"c".to_vec(), b"d".to_vec()),
                NetOp::DeleteRange(b"d\0".to_vec(), b"g".to_vec()),
                NetOp::Put(b"b".to_vec(), b"2".to_vec()),
                NetOp::Put(b"d".to_vec(), b"x".to_vec()),
            ]
        );
    }
}
