//! Child-process plumbing shared by the fixtures.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, read, released; the window for a race is tiny).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind port 0")
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("workspace root").to_path_buf()
}

/// `program` run with nothing of the test's environment but `PATH`, and then `env`: a program
/// under test reads only what the test gives it.
pub fn program<K, V>(program: impl AsRef<OsStr>, env: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).envs(env);
    command
}

/// A child process that is killed and reaped on drop, and whose log is shown if the test failed.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> std::io::Result<Self> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
        Ok(Self { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    /// Spawns `command` (logging to `log`) and waits up to 20 s until it listens on `port` of
    /// 127.0.0.1; panics with the log's tail otherwise.
    pub fn serving(name: &str, command: Command, log: &Path, port: u16) -> Self {
        let mut child = Self::spawn(name, command, log).expect("spawn");
        child.wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20)).expect("listening");
        child
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills (SIGKILL) and reaps the process now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (e.g. "TERM") and waits up to `timeout` for the exit; returns the exit code.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log's tail unless `addr` accepts TCP connections within `timeout`.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if !self.is_running() || Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{} did not listen on {addr}; log tail:\n{}",
                    self.name,
                    self.tail(4000)
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn tail(&self, bytes: u64) -> String {
        let Ok(mut f) = std::fs::File::open(&self.log) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log ({}) -----\n{}", self.name, self.log.display(), self.tail(8000));
        }
        self.kill();
    }
}
