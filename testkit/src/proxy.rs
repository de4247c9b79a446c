//! A TCP fault-injection proxy. It listens on a loopback port chosen by the kernel and relays
//! every accepted connection to one upstream address, with two faults under the caller's control:
//!
//! - **Delay**: a one-way delay applied to the bytes of each direction, so a round trip gains
//!   twice the delay. Bytes read at time `t` are written at `t + delay`, in order, through a
//!   per-direction queue of `(deadline, chunk)`: the reader keeps reading while earlier chunks
//!   wait, so the delay adds latency without capping throughput (as a long link does).
//! - **Outage**: [`Proxy::cut`] aborts every live connection (both sides see a reset) and resets
//!   every new one as soon as it is accepted, until [`Proxy::restore`].
//!
//! Dropping the proxy (or [`Proxy::stop`]) closes the listener and every relayed connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Most bytes one read takes from a socket.
const CHUNK_BYTES: usize = 64 << 10;
/// Most chunks waiting in one direction's queue (bounds the memory of a delayed connection to
/// `QUEUE_CHUNKS * CHUNK_BYTES`; a full queue pushes back on the sender, as TCP would).
const QUEUE_CHUNKS: usize = 1024;

/// A running proxy. Faults can be changed at any time from any task.
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: Arc<Control>,
    task: Option<JoinHandle<()>>,
}

/// What the accept loop and the connections share with the [`Proxy`] handle.
struct Control {
    /// One-way delay in nanoseconds.
    delay_nanos: AtomicU64,
    /// True while the proxy simulates an outage.
    down: watch::Sender<bool>,
    accepted: AtomicU64,
    live: AtomicUsize,
}

impl Control {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    fn is_down(&self) -> bool {
        *self.down.borrow()
    }
}

impl Proxy {
    /// Binds 127.0.0.1 on a port chosen by the kernel and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            delay_nanos: AtomicU64::new(0),
            down: watch::Sender::new(false),
            accepted: AtomicU64::new(0),
            live: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, control.clone()));
        Ok(Proxy {
            addr,
            upstream,
            control,
            task: Some(task),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where connections are relayed to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Sets the one-way delay of each direction (a round trip gains twice this). Applies to
    /// bytes read from now on, on live and new connections; order is always preserved.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.control.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    pub fn delay(&self) -> Duration {
        self.control.delay()
    }

    /// Starts an outage: aborts every live connection and resets new ones until
    /// [`Proxy::restore`].
    pub fn cut(&self) {
        self.set_down(true);
    }

    /// Ends an outage: new connections are relayed again.
    pub fn restore(&self) {
        self.set_down(false);
    }

    /// `true` is [`Proxy::cut`], `false` is [`Proxy::restore`].
    pub fn set_down(&self, down: bool) {
        self.control.down.send_replace(down);
    }

    pub fn is_down(&self) -> bool {
        self.control.is_down()
    }

    /// Connections accepted and relayed so far (refused ones are not counted).
    pub fn accepted(&self) -> u64 {
        self.control.accepted.load(Ordering::Relaxed)
    }

    /// Connections being relayed now.
    pub fn live(&self) -> usize {
        self.control.live.load(Ordering::Relaxed)
    }

    /// Stops the proxy and waits until the listener and every connection are closed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its listener and its JoinSet, which aborts every
        // connection task and so closes their sockets.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, control: Arc<Control>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    if control.is_down() {
                        reset(client);
                        continue;
                    }
                    control.accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(connection(client, upstream, control.clone()));
                }
                // Out of file descriptors and the like: let some connections finish.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Closes a socket with a reset rather than an orderly shutdown: what a peer sees when a link or
/// a host fails.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Counts a connection as live for as long as it exists.
struct Live(Arc<Control>);

impl Live {
    fn new(control: Arc<Control>) -> Self {
        control.live.fetch_add(1, Ordering::Relaxed);
        Live(control)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(mut client: TcpStream, upstream: SocketAddr, control: Arc<Control>) {
    let _live = Live::new(control.clone());
    let mut down = control.down.subscribe();
    let mut server = tokio::select! {
        server = TcpStream::connect(upstream) => match server {
            Ok(s) => s,
            Err(_) => return reset(client),
        },
        _ = down.wait_for(|d| *d) => return reset(client),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let relay = async {
            tokio::try_join!(
                pipe(client_read, server_write, &control),
                pipe(server_read, client_write, &control),
            )
        };
        tokio::select! {
            // Both directions closed, or one failed: dropping the sockets ends the other.
            _ = relay => false,
            _ = down.wait_for(|d| *d) => true,
        }
    };
    if cut {
        reset(client);
        reset(server);
    }
}

/// Relays one direction: a reader that stamps each chunk with its due time, and a writer that
/// writes each chunk when it is due. Returns when the sender has closed its side and everything
/// has been delivered (the close is passed on), or with the first error.
async fn pipe(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, control: &Control) -> io::Result<()> {
    let (queue, mut due) = mpsc::channel::<(Instant, Bytes)>(QUEUE_CHUNKS);
    let read = async move {
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
        loop {
            buf.reserve(CHUNK_BYTES);
            if from.read_buf(&mut buf).await? == 0 {
                // Dropping the queue tells the writer to pass the close on once it has drained.
                return Ok::<_, io::Error>(());
            }
            let at = Instant::now() + control.delay();
            if queue.send((at, buf.split().freeze())).await.is_err() {
                // The writer failed; its error is the one reported.
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every connection back; it stops when dropped.
    struct Echo {
        addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Echo {
        async fn start() -> Echo {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let mut conns = JoinSet::new();
                while let Ok((mut s, _)) = listener.accept().await {
                    conns.spawn(async move {
                        let _ = s.set_nodelay(true);
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            });
            Echo { addr, task }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn connect(p: &Proxy) -> TcpStream {
        let s = TcpStream::connect(p.addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Sends `data` and reads the echo back concurrently; returns what came back.
    async fn echo_round(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let recv = async {
            let mut back = Vec::with_capacity(data.len());
            r.read_to_end(&mut back).await.unwrap();
            back
        };
        tokio::join!(send, recv).1
    }

    fn pattern(len: usize) -> Vec<u8> {
        // Not periodic in any chunk size the relay uses.
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Waits for `cond` to hold, polling, failing after `limit`.
    async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reads until the peer closes or resets; fails if it stays open past `limit`.
    async fn closed_within(s: &mut TcpStream, limit: Duration) {
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => panic!("connection still open after {limit:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
            }
        }
    }

    #[tokio::test]
    async fn large_transfers_pass_intact_both_ways() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let data = pattern(16 << 20);
        let mut s = connect(&proxy).await;
        let back = echo_round(&mut s, &data).await;
        assert_eq!(back.len(), data.len());
        assert!(back == data, "echoed bytes differ");

        // Several connections at once, each with its own data.
        let rounds = (0..4).map(|i| {
            let proxy_addr = proxy.addr();
            tokio::spawn(async move {
                let data = pattern((1 << 20) + i * 7919);
                let mut s = TcpStream::connect(proxy_addr).await.unwrap();
                let back = echo_round(&mut s, &data).await;
                back == data
            })
        });
        for r in rounds {
            assert!(r.await.unwrap());
        }
        assert_eq!(proxy.accepted(), 5);
    }

    #[tokio::test]
    async fn delay_is_applied_each_way() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let delay = Duration::from_millis(40);
        proxy.set_delay(delay);
        assert_eq!(proxy.delay(), delay);
        let mut s = connect(&proxy).await;
        let mut byte = [0u8; 1];
        for i in 0..5u8 {
            let t = Instant::now();
            s.write_all(&[i]).await.unwrap();
            s.read_exact(&mut byte).await.unwrap();
            let rtt = t.elapsed();
            assert_eq!(byte[0], i);
            assert!(
                rtt >= 2 * delay,
                "round trip {rtt:?} shorter than twice {delay:?}"
            );
            assert!(
                rtt < 2 * delay + Duration::from_secs(1),
                "round trip {rtt:?}"
            );
        }

        // Back to no delay: round trips are fast again.
        proxy.set_delay(Duration::ZERO);
        let t = Instant::now();
        s.write_all(&[7]).await.unwrap();
        s.read_exact(&mut byte).await.unwrap();
        assert!(
            t.elapsed() < delay,
            "round trip {:?} without delay",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn delay_does_not_cap_throughput() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let delay = Duration::from_millis(50);
        proxy.set_delay(delay);
        // 32 MiB is at least 512 reads per direction: sleeping per read would take 50 s.
        let data = pattern(32 << 20);
        let mut s = connect(&proxy).await;
        let t = Instant::now();
        let back = echo_round(&mut s, &data).await;
        let took = t.elapsed();
        assert!(back == data, "echoed bytes differ");
        assert!(took >= 2 * delay, "{took:?}");
        assert!(took < Duration::from_secs(10), "32 MiB took {took:?}");
    }

    #[tokio::test]
    async fn cut_drops_live_connections_and_refuses_new_ones_until_restored() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut live = connect(&proxy).await;
        live.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        live.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(proxy.live(), 1);

        proxy.cut();
        assert!(proxy.is_down());
        closed_within(&mut live, Duration::from_secs(5)).await;
        eventually(Duration::from_secs(5), "no live connections", || {
            proxy.live() == 0
        })
        .await;

        // New connections are accepted by the kernel and closed at once, never relayed.
        for _ in 0..3 {
            match TcpStream::connect(proxy.addr()).await {
                Err(_) => {}
                Ok(mut s) => {
                    let _ = s.write_all(b"hello").await;
                    closed_within(&mut s, Duration::from_secs(5)).await;
                }
            }
        }
        assert_eq!(proxy.accepted(), 1);

        proxy.restore();
        assert!(!proxy.is_down());
        let mut s = connect(&proxy).await;
        assert_eq!(echo_round(&mut s, b"back again").await, b"back again");
        assert_eq!(proxy.accepted(), 2);
    }

    #[tokio::test]
    async fn a_cut_during_a_delayed_transfer_still_closes_at_once() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        proxy.set_delay(Duration::from_secs(30));
        let mut s = connect(&proxy).await;
        s.write_all(b"never delivered").await.unwrap();
        eventually(Duration::from_secs(5), "a live connection", || {
            proxy.live() == 1
        })
        .await;
        proxy.cut();
        closed_within(&mut s, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn stop_closes_the_listener_and_every_connection() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let addr = proxy.addr();
        let mut s = connect(&proxy).await;
        assert_eq!(echo_round_keep_open(&mut s, b"x").await, b"x");
        proxy.stop().await;
        closed_within(&mut s, Duration::from_secs(5)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener still open"
        );
    }

    #[tokio::test]
    async fn drop_closes_every_connection() {
        let echo = Echo::start().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut s = connect(&proxy).await;
        assert_eq!(echo_round_keep_open(&mut s, b"y").await, b"y");
        drop(proxy);
        closed_within(&mut s, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn an_unreachable_upstream_closes_the_client() {
        // A port that was just free: nothing listens there.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let proxy = Proxy::start(addr).await.unwrap();
        let mut s = connect(&proxy).await;
        closed_within(&mut s, Duration::from_secs(5)).await;
        eventually(Duration::from_secs(5), "no live connections", || {
            proxy.live() == 0
        })
        .await;
    }

    /// One echo exchange that leaves the connection open.
    async fn echo_round_keep_open(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        s.write_all(data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await.unwrap();
        back
    }
}
