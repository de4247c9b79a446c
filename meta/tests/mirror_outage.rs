//! A mirror whose source goes away: a source, a fault-injecting TCP proxy, and a mirror following
//! through it and serving reads. While the link is cut the mirror keeps answering from what it
//! has and says since when the source is unreachable; when the link comes back it catches up
//! and shows what the source wrote meanwhile. Over a 50 ms one-way delay, lag stays bounded.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorfs_api::meta::{self as pb, admin_client::AdminClient, fs_client::FsClient};
use mirrorfs_api::{FsErrorKind, Ino, Revision};
use mirrorfs_meta::engine::memory::MemoryEngine;
use mirrorfs_meta::follower::{self, FollowerConfig, FollowerHandle};
use mirrorfs_meta::metrics::MetaMetrics;
use mirrorfs_meta::service::{AdminToken, MetaState};
use mirrorfs_meta::{Engine, FsMeta, client};
use mirrorfs_testkit::Proxy;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

const ADMIN: &str = "outage-admin-token";
const MIRROR_ADMIN: &str = "outage-mirror-admin-token";
/// Generous bound for anything that should take milliseconds, so a loaded machine does not fail
/// the test; a hang still fails it.
const LIMIT: Duration = Duration::from_secs(30);

/// One meta service on a loopback port chosen by the kernel; stops when dropped.
struct Service {
    url: String,
    addr: SocketAddr,
    fs: FsMeta,
    stop: watch::Sender<bool>,
}

impl Service {
    async fn start(fs: FsMeta, admin: &str, mirror: Option<FollowerHandle>) -> Service {
        let state = Arc::new(MetaState {
            fs: fs.clone(),
            admin: AdminToken::new(admin),
            metrics: Arc::new(MetaMetrics::register(&mut Registry::default())),
            started: std::time::Instant::now(),
            replication: None,
            mirror,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(mirrorfs_meta::service::run(listener, state, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Service {
            url: format!("http://{addr}"),
            addr,
            fs,
            stop,
        }
    }

    async fn admin(&self, token: &str) -> AdminClient<client::Authed> {
        let ch = client::connect(&self.url, Duration::from_secs(5))
            .await
            .unwrap();
        client::admin(ch, token).unwrap()
    }

    async fn fs(&self, token: &str) -> FsClient<client::Authed> {
        let ch = client::connect(&self.url, Duration::from_secs(5))
            .await
            .unwrap();
        client::fs(ch, token).unwrap()
    }

    async fn head(&self) -> Revision {
        self.fs.engine().head().await.unwrap().revision
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A source, a proxy in front of it, and a mirror that follows through the proxy.
struct Setup {
    source: Service,
    proxy: Proxy,
    mirror: Service,
    follower: FollowerHandle,
    stop_follower: watch::Sender<bool>,
    /// Source volume "data" and its token.
    source_fs: FsClient<client::Authed>,
    /// Mirror volume "data-mirror" (exposing "data") and its token.
    mirror_fs: FsClient<client::Authed>,
    /// `/dir` in the volume.
    dir: u64,
}

impl Setup {
    async fn start() -> Setup {
        let source_engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let source = Service::start(FsMeta::open(source_engine).await.unwrap(), ADMIN, None).await;
        let proxy = Proxy::start(source.addr).await.unwrap();

        let mirror_engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let mirror_fs = FsMeta::open_mirror(mirror_engine.clone()).await.unwrap();
        let mut config = FollowerConfig::new(proxy.url(), ADMIN);
        config.connect_timeout = Duration::from_secs(2);
        config.backoff_min = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(200);
        let (stop_follower, stop_rx) = watch::channel(false);
        let follower = follower::start(mirror_engine, config, stop_rx)
            .await
            .unwrap();
        let mirror = Service::start(mirror_fs, MIRROR_ADMIN, Some(follower.clone())).await;

        // The source volume with a directory of ten files.
        let source_token = source
            .admin(ADMIN)
            .await
            .create_volume(pb::CreateVolumeRequest {
                name: "data".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let mut source_fs = source.fs(&source_token).await;
        let dir = source_fs
            .mkdir(pb::MkdirRequest {
                volume: vref("data"),
                parent: Ino::ROOT.0,
                name: b"dir".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .attr
            .unwrap()
            .ino;
        for i in 0..10 {
            create(&mut source_fs, dir, i).await;
        }

        // The mirror volume, once the mirror has the source volume.
        wait_applied(&follower, source.head().await).await;
        let mirror_token = mirror
            .admin(MIRROR_ADMIN)
            .await
            .create_volume(pb::CreateVolumeRequest {
                name: "data-mirror".into(),
                source_volume: "data".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let mirror_fs = mirror.fs(&mirror_token).await;
        Setup {
            source,
            proxy,
            mirror,
            follower,
            stop_follower,
            source_fs,
            mirror_fs,
            dir,
        }
    }

    /// The mirror's status as `mirrorfs status` shows it, through its Admin service.
    async fn status(&self) -> pb::MirrorStatus {
        self.mirror
            .admin(MIRROR_ADMIN)
            .await
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .mirror
            .expect("a mirror reports its mirror status")
    }

    /// Lookup, resolve and readdir through the mirror's gRPC: the names in `/dir`.
    async fn mirror_listing(&self) -> Vec<String> {
        let mut fs = self.mirror_fs.clone();
        let resolved = fs
            .resolve(pb::ResolveRequest {
                volume: vref("data-mirror"),
                path: "/dir".into(),
            })
            .await
            .unwrap()
            .into_inner();
        match resolved.result {
            Some(pb::resolve_reply::Result::Found(a)) => assert_eq!(a.ino, self.dir),
            other => panic!("/dir does not resolve on the mirror: {other:?}"),
        }
        let looked_up = fs
            .lookup(pb::LookupRequest {
                volume: vref("data-mirror"),
                parent: self.dir,
                name: name(0),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            looked_up.attr.unwrap().kind,
            pb::FileKind::File as i32,
            "dir/file-0000 on the mirror"
        );
        let mut names = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = fs
                .read_dir(pb::ReadDirRequest {
                    volume: vref("data-mirror"),
                    ino: self.dir,
                    after: after.clone(),
                    limit: 100,
                    plus: false,
                })
                .await
                .unwrap()
                .into_inner();
            names.extend(
                page.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.name).into_owned()),
            );
            match page.entries.last() {
                Some(e) if page.more => after = e.name.clone(),
                _ => return names,
            }
        }
    }

    async fn mirror_has(&self, i: usize) -> bool {
        let r = self
            .mirror_fs
            .clone()
            .lookup(pb::LookupRequest {
                volume: vref("data-mirror"),
                parent: self.dir,
                name: name(i),
            })
            .await;
        match r {
            Ok(_) => true,
            Err(e) if FsErrorKind::of(&e) == Some(FsErrorKind::NotFound) => false,
            Err(e) => panic!("lookup of file {i} on the mirror failed: {e}"),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop_follower.send_replace(true);
    }
}

fn vref(name: &str) -> Option<pb::VolumeRef> {
    Some(pb::VolumeRef {
        volume: name.into(),
    })
}

fn name(i: usize) -> Vec<u8> {
    format!("file-{i:04}").into_bytes()
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| String::from_utf8(name(i)).unwrap()).collect()
}

/// Creates `dir/file-i` on the source; returns the revision it committed at.
async fn create(fs: &mut FsClient<client::Authed>, dir: u64, i: usize) -> u64 {
    fs.create(pb::CreateRequest {
        volume: vref("data"),
        parent: dir,
        name: name(i),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
    })
    .await
    .unwrap()
    .into_inner()
    .revision
}

async fn wait_applied(follower: &FollowerHandle, target: Revision) {
    let mut applied = follower.applied();
    let reached = tokio::time::timeout(LIMIT, applied.wait_for(|r| *r >= target)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "the mirror did not reach revision {} within {LIMIT:?}: {:?}",
        target.0,
        follower.status()
    );
}

/// Polls `cond` until it holds, failing after [`LIMIT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + LIMIT;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_reads_through_a_source_outage_and_catches_up() {
    let mut s = Setup::start().await;
    assert_eq!(s.mirror_listing().await, names(0..10));
    let status = s.status().await;
    assert!(status.source_reachable, "{status:?}");
    assert!(status.unreachable_since.is_none(), "{status:?}");

    // The link goes down: the mirror notices and says since when.
    let cut_at = std::time::SystemTime::now();
    s.proxy.cut();
    eventually("the mirror to report the source unreachable", || async {
        !s.status().await.source_reachable
    })
    .await;
    let status = s.status().await;
    let since = status
        .unreachable_since
        .as_ref()
        .expect("unreachable_since is set while the source is unreachable");
    let since =
        std::time::UNIX_EPOCH + Duration::new(u64::try_from(since.seconds).unwrap(), since.nanos);
    assert!(
        since + Duration::from_secs(1) >= cut_at,
        "unreachable since {since:?}, but the link was cut at {cut_at:?}"
    );
    let applied_at_cut = *s.follower.applied().borrow();

    // The source keeps writing; the mirror keeps serving what it has.
    for i in 10..30 {
        create(&mut s.source_fs, s.dir, i).await;
    }
    let head = s.source.head().await;
    assert_eq!(s.mirror_listing().await, names(0..10));
    assert!(!s.mirror_has(10).await);
    assert_eq!(*s.follower.applied().borrow(), applied_at_cut);
    let status = s.status().await;
    assert!(!status.source_reachable, "{status:?}");
    assert_eq!(status.applied_revision, applied_at_cut.0, "{status:?}");

    // Mirror volumes stay read-only through all of this.
    let refused = s
        .mirror_fs
        .clone()
        .create(pb::CreateRequest {
            volume: vref("data-mirror"),
            parent: s.dir,
            name: b"local-write".to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(FsErrorKind::of(&refused), Some(FsErrorKind::ReadOnly));

    // The link comes back: the mirror catches up and shows the new files.
    s.proxy.restore();
    wait_applied(&s.follower, head).await;
    assert_eq!(s.mirror_listing().await, names(0..30));
    eventually(
        "the mirror to report the source reachable again",
        || async {
            let st = s.status().await;
            st.source_reachable && st.unreachable_since.is_none()
        },
    )
    .await;
    let status = s.status().await;
    assert!(status.applied_revision >= head.0, "{status:?}");

    let check = s.follower.check().await.unwrap();
    assert!(check.equal, "mirror differs from source: {check:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_stays_bounded_over_a_slow_link() {
    const DELAY: Duration = Duration::from_millis(50);
    let mut s = Setup::start().await;
    s.proxy.set_delay(DELAY);
    // The live changelog stream now crosses a slow link in both directions.
    let mut lags = Vec::new();
    let mut applied = s.follower.applied();
    for i in 10..60 {
        let rev = Revision(create(&mut s.source_fs, s.dir, i).await);
        let acked = Instant::now();
        let reached = tokio::time::timeout(LIMIT, applied.wait_for(|r| *r >= rev)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "revision {} not applied",
            rev.0
        );
        lags.push(acked.elapsed());
    }
    lags.sort();
    let (p50, max) = (lags[lags.len() / 2], lags[lags.len() - 1]);
    // Each change crosses the link once: at least about the delay, and never much more.
    assert!(
        p50 >= DELAY - Duration::from_millis(10),
        "median lag {p50:?} is below the {DELAY:?} link delay: the follower is not behind the proxy"
    );
    assert!(
        max < Duration::from_secs(1),
        "lag up to {max:?} over a {DELAY:?} link"
    );

    // A burst while the link is slow: the mirror still reaches the head promptly.
    for i in 60..260 {
        create(&mut s.source_fs, s.dir, i).await;
    }
    let head = s.source.head().await;
    let t = Instant::now();
    wait_applied(&s.follower, head).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(s.mirror_listing().await, names(0..260));
    let status = s.status().await;
    assert!(status.source_reachable, "{status:?}");
    assert!(status.lag_seconds < 5.0, "{status:?}");
}
