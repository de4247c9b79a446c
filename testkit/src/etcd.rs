//! Real etcd processes for tests and benchmarks: a cluster of one or more members on loopback
//! ports chosen by the kernel, each with its data in a temporary directory, killed (by pid) when
//! the handle drops, also while a test unwinds from a panic.
//!
//! The members start with raised request limits (`--max-txn-ops 20000`,
//! `--max-request-bytes 32 MiB`, see [`MAX_TXN_OPS`] and [`MAX_REQUEST_BYTES`]) so that the
//! engine's large transactions fit. The binary is `$MIRRORFS_ETCD_BIN`, else `etcd` on the
//! `PATH`, else `/usr/bin/etcd`; if none exists, [`EtcdCluster::start`] fails with a message
//! saying how to install it.
//!
//! [`EtcdCluster::start_with`] serves the client URLs over TLS ([`EtcdTlsFiles`], optionally
//! with `--client-cert-auth`); peers stay plain HTTP on loopback. Readiness is polled on each
//! member's plain-HTTP metrics URL (`--listen-metrics-urls`, `/health`), so it works whatever
//! the client URLs require.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `--max-txn-ops` of the members.
pub const MAX_TXN_OPS: usize = 20_000;
/// `--max-request-bytes` of the members.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// How long a cluster may take to elect a leader.
const READY: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client: String,
    /// `host:port` of the plain-HTTP metrics and health URL.
    health: String,
    child: Option<Child>,
    log: PathBuf,
}

/// TLS material of the members' client URLs, as PEM files.
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    /// The server certificate (it must name `127.0.0.1`) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a CA, the members require client certificates signed by it (`--client-cert-auth`).
    pub client_ca: Option<PathBuf>,
}

/// How to start a cluster.
#[derive(Clone, Debug, Default)]
pub struct EtcdStart {
    /// Members (at least one).
    pub members: usize,
    /// TLS on the client URLs; `None`: plain HTTP.
    pub tls: Option<EtcdTlsFiles>,
}

/// A running etcd cluster. See the module docs.
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

/// The etcd binary, or a message saying how to install it.
pub fn etcd_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("MIRRORFS_ETCD_BIN") {
        return Ok(PathBuf::from(bin));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("etcd");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let fallback = Path::new("/usr/bin/etcd");
    if fallback.is_file() {
        return Ok(fallback.to_path_buf());
    }
    Err("etcd is missing: the etcd engine's tests and benchmarks run real etcd servers. Install it \
         with `sudo ./scripts/setup.sh etcd-server` (Debian's etcd 3.4), or point \
         MIRRORFS_ETCD_BIN at an etcd binary"
        .into())
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind a loopback port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local address: {e}"))
}

impl EtcdCluster {
    /// Starts a cluster of `members` members and waits until it serves requests.
    pub fn start(members: usize) -> Result<Self, String> {
        Self::start_with(&EtcdStart { members, tls: None })
    }

    /// Starts a cluster as `how` says and waits until it serves requests.
    pub fn start_with(how: &EtcdStart) -> Result<Self, String> {
        let bin = etcd_binary()?;
        // A port picked free can be taken by someone else before etcd binds it: try again.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(&bin, how.members.max(1), how.tls.as_ref()) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once(bin: &Path, n: usize, tls: Option<&EtcdTlsFiles>) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, _))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            _dir: dir,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        for (i, (client, peer, metrics)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let data = cluster._dir.path().join(&name);
            let log = cluster._dir.path().join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log)
                .map_err(|e| format!("create {}: {e}", log.display()))?;
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let metrics_url = format!("http://127.0.0.1:{metrics}");
            let mut command = Command::new(bin);
            if let Some(tls) = tls {
                command
                    .arg("--cert-file")
                    .arg(&tls.cert)
                    .arg("--key-file")
                    .arg(&tls.key);
                if let Some(ca) = &tls.client_ca {
                    command
                        .arg("--trusted-ca-file")
                        .arg(ca)
                        .arg("--client-cert-auth");
                }
            }
            let child = command
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-metrics-urls", &metrics_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "mirrorfs-test"])
                .args(["--max-txn-ops", &MAX_TXN_OPS.to_string()])
                .args(["--max-request-bytes", &MAX_REQUEST_BYTES.to_string()])
                .args(["--quota-backend-bytes", &(8u64 << 30).to_string()])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|e| format!("start {}: {e}", bin.display()))?;
            cluster.members.push(Member {
                name,
                client: format!("127.0.0.1:{client}"),
                health: format!("127.0.0.1:{metrics}"),
                child: Some(child),
                log,
            });
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY;
        for i in 0..self.members.len() {
            loop {
                let m = &mut self.members[i];
                if let Some(child) = &mut m.child
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!(
                        "etcd member {} exited with {status} while starting:\n{}",
                        m.name,
                        log_tail(&m.log)
                    ));
                }
                if healthy(&m.health) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "etcd member {} did not become healthy within {READY:?}:\n{}",
                        m.name,
                        log_tail(&m.log)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// `host:port` of every member's client URL (without a scheme: the etcd engine uses
    /// `https://` when it is given TLS options).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Kills member `i` with SIGKILL (by pid) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Whether the member at `addr` answers `/health` with a leader.
fn healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
