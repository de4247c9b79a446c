//! A `mirrorfs meta serve` process for tests: started on ports chosen by the kernel, killed by
//! its pid when dropped (also when a test panics).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub struct Service {
    child: Child,
    pub url: String,
    pub metrics: String,
}

impl Service {
    /// Starts `mirrorfs meta serve --data-dir DATA` with `extra` flags and waits until it
    /// prints its addresses.
    pub fn start<S: AsRef<OsStr>>(data: &Path, extra: &[S]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mirrorfs"))
            .args([
                "meta",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("MIRRORFS_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn mirrorfs meta serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = |prefix: &str| loop {
            let line = lines
                .next()
                .expect("meta serve exited before printing its addresses")
                .expect("read stdout");
            if let Some(rest) = line.strip_prefix(prefix) {
                break rest.to_owned();
            }
        };
        let url = next("mirrorfs meta: serving gRPC on ");
        let metrics = next("mirrorfs meta: serving /metrics and /healthz on ");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Service {
            child,
            url,
            metrics,
        }
    }

    /// SIGKILL, by this child's pid.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `mirrorfs` command with `env`, without any admin token from the caller's environment.
pub fn mirrorfs(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mirrorfs"));
    cmd.args(args)
        .env_remove("MIRRORFS_ADMIN_TOKEN")
        .env_remove("MIRRORFS_ADMIN_TOKEN_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mirrorfs")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `mirrorfs` and asserts that it fails with a message containing `needle`.
pub fn fails_with(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let o = mirrorfs(args, env);
    assert!(
        !o.status.success(),
        "`mirrorfs {}` should fail:\n{}",
        args.join(" "),
        text(&o)
    );
    assert!(
        text(&o).contains(needle),
        "`mirrorfs {}` should say {needle:?}:\n{}",
        args.join(" "),
        text(&o)
    );
}
