//! Helpers for the binaries' end-to-end tests (each system's `tests/production.rs`): start a
//! binary as a child process, wait for a log line, read a field from it, scrape `/metrics`,
//! check the Prometheus text, send SIGTERM and bound the wait for the exit. Test support only:
//! it panics with a message instead of returning errors.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "test support for production binaries: real processes, sockets, threads and time"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long a test waits for a log line or an exit (generous: CI machines are loaded).
pub const WAIT: Duration = Duration::from_secs(60);

/// A running binary whose stderr log is read line by line.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Starts `binary` with `args`, stdin closed, stdout piped, stderr read by a thread.
    pub fn start(binary: &str, args: &[&str]) -> Process {
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {binary}: {error}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines, seen: Vec::new() }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout (taken once).
    pub fn stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout taken once")
    }

    /// The first log line (from here on) containing `needle`; panics after `WAIT`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no log line with {needle:?}; the log so far:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Every log line read so far (and those ready now).
    pub fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) with `kill(1)`, so tests need no unsafe code.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.id());
    }

    /// Waits for the exit (panics after `bound`) and returns the status and the time taken.
    pub fn wait_exit(&mut self, bound: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the child") {
                return (status, started.elapsed());
            }
            if started.elapsed() > bound {
                let _ = self.child.kill();
                panic!("no exit within {bound:?}; the log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A test that failed early leaves no process behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `key=value` in a text log line (the first word after `key=`).
pub fn field(line: &str, key: &str) -> Option<String> {
    let pattern = format!("{key}=");
    let start = line.find(&pattern)? + pattern.len();
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_string())
}

/// `GET path` over HTTP/1.0 at `addr`: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

/// `method path` with `body` over HTTP/1.0 at `addr`: the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let length = body.len();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {length}\r\n\r\n")
        .and_then(|()| stream.write_all(body.as_bytes()))
        .expect("sending the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reading the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    (status.unwrap_or_else(|| panic!("no status in {head:?}")), body.to_string())
}

/// Checks `text` is Prometheus/OpenMetrics text line by line: comments are `# HELP`, `# TYPE`,
/// `# UNIT` or the final `# EOF`; samples are `name{labels} value` with a numeric value.
pub fn check_exposition(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no final # EOF in:\n{text}");
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let word = comment.split_whitespace().next().unwrap_or("");
            assert!(["HELP", "TYPE", "UNIT", "EOF"].contains(&word), "bad comment {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name = series.split('{').next().unwrap_or("");
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        assert!(valid && !name.is_empty(), "bad metric name in {line:?}");
        assert_eq!(series.contains('{'), series.ends_with('}'), "bad labels in {line:?}");
    }
}

/// The value of the sample `series` (a name, or a name with its labels) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}
