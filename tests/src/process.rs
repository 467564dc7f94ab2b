//! Child processes that cannot outlive the test process.
//!
//! Every child gets `PR_SET_PDEATHSIG(SIGKILL)`: when the thread that spawned it exits (or the
//! whole test process dies, even by a panic-abort), the kernel kills the child. A [`ChildGuard`]
//! also kills on drop, so a failing test leaves no server or worker behind.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let name = name.into();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name,
            child,
            log: log.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child printed so far (for assertion messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the child has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` until the child's output contains `text` (a line it logs once it
    /// reached a state); an error with its output otherwise.
    pub async fn says(&self, text: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
        let what = format!("{} to say {text:?}", self.name);
        let said = crate::wait::wait_for(&what, timeout, || async {
            Ok(self.output().contains(text).then_some(()))
        });
        said.await.with_context(|| self.output())
    }

    /// Waits up to `timeout` for the child to exit and returns its status; an error (with its
    /// output) when it is still running then.
    pub async fn exits_within(
        &mut self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let output = self.output();
        let me = std::sync::Mutex::new(self);
        let exited = crate::wait::wait_for("the process to exit", timeout, || async {
            Ok(me.lock().unwrap_or_else(|e| e.into_inner()).try_wait())
        });
        exited.await.with_context(|| output.clone())
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) {
        signal(self.pid(), libc::SIGTERM);
    }

    /// SIGKILL and reap: a crash, as far as everyone else can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit in a blocking thread, so async tests can await it.
    pub async fn wait(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let name = self.name.clone();
        let status = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (status, self)
        })
        .await
        .context("joining waiter")?;
        status.0.with_context(|| format!("waiting for {name}"))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}

/// Sends `sig` to `pid`; an already-gone process is fine.
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a plain pid and signal number has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether a process with this pid exists (used to clean stale data dirs).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A free loopback port. The port is released before use, so a tiny race with other processes
/// remains; servers that fail to bind show it in their log.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// `line` without its ANSI colour sequences (`ESC [ ... m`), so fields read as `name=value`.
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
