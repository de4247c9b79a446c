//! Background mode without `fork` in a threaded process: the command re-executes itself in the
//! foreground with [`READY_ENV`] set and its stdout on a pipe, and waits for one line on that
//! pipe: `ready` once the mount is live, or `error: …` with why it failed. The parent exits 0
//! only after `ready`; a child that dies first is reported with its exit status. The child
//! starts a new session (no controlling terminal), and its stderr (the log) goes to a file or
//! to /dev/null, so a caller reading the parent's output to the end never waits for the daemon.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::MountError;

/// Set in the re-executed child: report readiness on stdout.
pub const READY_ENV: &str = "MIRRORFS_MOUNT_READY_PIPE";

/// Re-executes this program with `args` (which must ask for the foreground) and waits until the
/// child reports that the mount is live. The child's log goes to `log_file` (appended) or is
/// discarded.
pub fn spawn(args: Vec<OsString>, log_file: Option<&Path>) -> Result<u32, MountError> {
    let exe = std::env::current_exe()
        .map_err(|e| MountError::Background(format!("cannot find this program: {e}")))?;
    let stderr = match log_file {
        Some(path) => Stdio::from(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    MountError::Background(format!("cannot open log file {}: {e}", path.display()))
                })?,
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(&exe)
        .args(&args)
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| MountError::Background(format!("cannot start {}: {e}", exe.display())))?;
    let pid = child.id();
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        // EOF (the child died) leaves `line` empty.
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let line = line.trim_end();
    if line == "ready" {
        return Ok(pid);
    }
    if let Some(msg) = line.strip_prefix("error: ") {
        let _ = child.wait();
        return Err(MountError::Background(msg.to_owned()));
    }
    let status = child
        .wait()
        .map_or_else(|e| e.to_string(), |s| s.to_string());
    Err(MountError::Background(format!(
        "the mount process (pid {pid}) ended ({status}) before the mount was live{}",
        match log_file {
            Some(p) => format!("; see its log in {}", p.display()),
            None => "; run with --foreground (or --log-file) to see why".to_owned(),
        }
    )))
}

/// The child's side of the readiness pipe (a no-op unless started by [`spawn`]).
#[derive(Debug)]
pub struct Readiness {
    pipe: bool,
}

impl Readiness {
    /// Reads [`READY_ENV`]; a child of [`spawn`] also leaves the parent's session.
    pub fn from_env() -> Self {
        let pipe = std::env::var_os(READY_ENV).is_some();
        if pipe {
            // Fails only if already a session leader; either way no terminal signals reach us.
            let _ = nix::unistd::setsid();
        }
        Self { pipe }
    }

    /// No readiness reporting (a foreground mount, tests).
    pub fn none() -> Self {
        Self { pipe: false }
    }

    /// Reports the outcome to the parent once, then points stdout at /dev/null so that later
    /// output cannot fail on the closed pipe.
    pub fn report(&mut self, outcome: Result<(), &str>) {
        if !std::mem::take(&mut self.pipe) {
            return;
        }
        let line = match outcome {
            Ok(()) => "ready".to_owned(),
            Err(msg) => format!("error: {}", msg.replace('\n', " ")),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        drop(out);
        if let Ok(null) = File::options().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2_stdout(&null);
        }
    }
}
