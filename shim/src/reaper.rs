//! Reaping: the shim is a child subreaper, so every process it starts (runc
//! commands) and every container process whose parent dies is reparented to
//! it, and all of them are reaped here, on SIGCHLD, with `waitpid(-1)`.
//!
//! A reaped pid goes to whoever waits for it: a runc command the shim ran
//! registers a waiter right after spawning it, or else the exit is a
//! container process's (or an orphan's) and goes to the exit channel, where
//! the task service matches it to a process. Nothing else in the shim may
//! wait for children (no `std::process::Child::wait`, no tokio `process`).
//!
//! The runtime is single-threaded: a waiter registered in the same poll as
//! the `spawn`, with no `.await` between them, is in place before the reaper
//! task can run, so no exit of a command can slip past its waiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustix::process::{wait, WaitOptions};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// A reaped process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit code, or 128 + the signal that killed it.
    pub status: u32,
    pub at: SystemTime,
}

/// The exit status of a raw `waitpid` status: the code of a process that
/// exited, 128 + the signal number of one that was killed.
pub fn exit_status(raw: i32) -> u32 {
    let sig = raw & 0x7f;
    if sig == 0 {
        ((raw >> 8) & 0xff) as u32
    } else {
        128 + sig as u32
    }
}

#[derive(Default)]
struct Waiters {
    by_pid: HashMap<i32, oneshot::Sender<Exit>>,
}

/// The registry of waiters, shared by the reaper task and the spawners.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
}

impl Reaper {
    /// Starts reaping on the current runtime; exits that no waiter claims
    /// go to the returned channel. Call before any child is spawned.
    pub fn start() -> std::io::Result<(Reaper, mpsc::UnboundedReceiver<Exit>)> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper::default();
        let (exits, unclaimed) = mpsc::unbounded_channel();
        let waiters = reaper.waiters.clone();
        tokio::spawn(async move {
            loop {
                reap_all(&waiters, &exits);
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok((reaper, unclaimed))
    }

    /// The exit of `pid`, a child spawned in this same poll (see the module
    /// notes).
    pub fn wait_for(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("reaper waiters").by_pid.insert(pid, tx);
        rx
    }
}

fn reap_all(waiters: &Mutex<Waiters>, exits: &mpsc::UnboundedSender<Exit>) {
    loop {
        match wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                let exit = Exit {
                    pid: pid.as_raw_nonzero().get(),
                    status: exit_status(status.as_raw()),
                    at: SystemTime::now(),
                };
                let waiter = waiters.lock().expect("reaper waiters").by_pid.remove(&exit.pid);
                match waiter {
                    Some(w) => {
                        let _ = w.send(exit);
                    }
                    None => {
                        let _ = exits.send(exit);
                    }
                }
            }
            // No child has changed state, or there are no children.
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(3 << 8), 3);
        assert_eq!(exit_status(255 << 8), 255);
        // Killed by SIGKILL (9), with and without a core dump flag.
        assert_eq!(exit_status(9), 137);
        assert_eq!(exit_status(0x80 | 11), 139);
        assert_eq!(exit_status(15), 143);
    }

    #[test]
    // The reaper waits for the children, not `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn real_children_through_waitpid() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (reaper, _unclaimed) = Reaper::start().unwrap();
            for (script, want) in [("exit 3", 3), ("kill -TERM $$", 143), ("true", 0)] {
                let child = std::process::Command::new("/bin/sh").arg("-c").arg(script).spawn().unwrap();
                let exit = reaper.wait_for(child.id() as i32).await.unwrap();
                assert_eq!(exit.status, want, "{script}");
            }
        });
    }
}
