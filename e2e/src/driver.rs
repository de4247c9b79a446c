//! The driver under test: a real `mirrorfs csi` process on a Unix socket in the test's
//! directory, configured only through its documented flags, which a test can SIGKILL (by pid)
//! and start again with the same flags and state directory; and CSI clients connected to it as
//! a CO connects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorfs_csi::csi::controller_client::ControllerClient;
use mirrorfs_csi::csi::identity_client::IdentityClient;
use mirrorfs_csi::csi::node_client::NodeClient;
use mirrorfs_csi::csi::{self as pb};
use tonic::transport::Channel;

use crate::process::Proc;

/// How long the driver gets to serve its socket.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// The flags of one driver instance.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// `controller`, `node` or `all`.
    pub role: String,
    pub node_id: String,
    pub region: Option<String>,
    pub kubelet_dir: PathBuf,
    pub state_dir: PathBuf,
    /// `--path-wait`, e.g. `3s`.
    pub path_wait: String,
    pub max_lag: Option<String>,
    /// `--cache-root` (each staged volume's disk cache under it).
    pub cache_root: Option<PathBuf>,
    /// `--cache-size`, e.g. `64MiB`.
    pub cache_size: Option<String>,
}

/// A running (or killed) `mirrorfs csi` process.
pub struct Driver {
    pub config: DriverConfig,
    pub socket: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
    channel: Option<Channel>,
    starts: u32,
}

impl Driver {
    /// Starts the driver with its socket at `socket` and waits until Probe answers.
    pub async fn start(config: DriverConfig, socket: &Path, log: &Path) -> Driver {
        let mut d = Driver {
            config,
            socket: socket.to_owned(),
            log: log.to_owned(),
            proc: None,
            channel: None,
            starts: 0,
        };
        d.spawn().await;
        d
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    async fn spawn(&mut self) {
        let c = &self.config;
        let mut cmd = Command::new(crate::binary::mirrorfs());
        cmd.arg("csi")
            .arg("--endpoint")
            .arg(self.endpoint())
            .args(["--role", &c.role, "--node-id", &c.node_id])
            .arg("--kubelet-dir")
            .arg(&c.kubelet_dir)
            .arg("--state-dir")
            .arg(&c.state_dir)
            .args(["--path-wait", &c.path_wait])
            .arg("--mount-binary")
            .arg(crate::binary::mirrorfs())
            .env("MIRRORFS_LOG", "info")
            .env_remove("CSI_ENDPOINT");
        if let Some(r) = &c.region {
            cmd.args(["--region", r]);
        }
        if let Some(l) = &c.max_lag {
            cmd.args(["--max-lag", l]);
        }
        if let Some(r) = &c.cache_root {
            cmd.arg("--cache-root").arg(r);
        }
        if let Some(s) = &c.cache_size {
            cmd.args(["--cache-size", s]);
        }
        self.starts += 1;
        let proc = Proc::spawn(
            &format!("mirrorfs csi (start {})", self.starts),
            cmd,
            &self.log,
        );
        self.proc = Some(proc);
        self.channel = None;
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(ch) =
                mirrorfs_csi::client::connect(&self.endpoint(), Duration::from_secs(2)).await
            {
                let ok = IdentityClient::new(ch.clone())
                    .probe(pb::ProbeRequest {})
                    .await
                    .is_ok_and(|r| r.into_inner().ready.is_none_or(|b| b));
                if ok {
                    self.channel = Some(ch);
                    return;
                }
            }
            let running = self.proc.as_mut().is_some_and(Proc::running);
            assert!(
                running,
                "mirrorfs csi exited before serving {}:\n{}",
                self.socket.display(),
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "mirrorfs csi did not answer Probe on {} within {START_WAIT:?}:\n{}",
                self.socket.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, by the process's pid.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        self.channel = None;
    }

    /// Starts the driver again with the same flags and state directory (after [`kill9`]).
    ///
    /// [`kill9`]: Driver::kill9
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Whether the process is still alive (a panic or crash ends it).
    pub fn alive(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    /// Everything the driver logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn channel(&self) -> Channel {
        self.channel
            .clone()
            .expect("the driver is not running (killed and not restarted)")
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel())
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel())
    }

    /// Asserts the process is alive and still answers Probe (after bad input, say).
    pub async fn assert_healthy(&mut self, after: &str) {
        assert!(
            self.alive(),
            "mirrorfs csi died after {after}:\n{}",
            self.log()
        );
        let r = self.identity().probe(pb::ProbeRequest {}).await;
        assert!(
            r.is_ok(),
            "mirrorfs csi does not answer Probe after {after}: {r:?}"
        );
    }
}
