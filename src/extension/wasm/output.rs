//! A guest's stdout and stderr, turned into log lines.
//!
//! Plugins print: Rust's `println!` and panic messages, Python's `print`
//! and tracebacks, JavaScript's `console.log`. The host gives every
//! instance a WASI stdout and stderr that never block and never fail: what
//! the guest writes during a call is kept in memory, at most
//! `output_bytes_per_call` bytes (the rest is counted and dropped), and
//! when the call ends, failed calls included, each line becomes one log
//! line tagged with the plugin, the session and the stream (`stdout` at
//! info level, `stderr` at warn level). A line is cut at
//! [`MAX_LINE`] bytes. So a guest's panic message is never lost, and a
//! guest that prints in a loop costs the host a bounded buffer. Messages
//! logged through `host.log` share the same per-call budget and are cut at
//! [`MAX_LOG_MESSAGE`] bytes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The longest log line made from guest output, in bytes; longer lines are
/// cut (at a character boundary) and marked with `…`.
pub const MAX_LINE: usize = 1024;

/// The longest message a guest may log through `host.log`, in bytes;
/// longer ones are cut like output lines.
pub const MAX_LOG_MESSAGE: usize = 4096;

/// What one stream has written in the current call.
#[derive(Default)]
struct Buffered {
    /// Bytes kept (up to the per-call cap, shared by both streams).
    data: Vec<u8>,
}

/// The output of one instance: both streams, the per-call cap and the
/// count of dropped bytes.
struct Capture {
    /// Per stream: 0 = stdout, 1 = stderr.
    streams: [Buffered; 2],
    /// Bytes logged through `host.log` in this call.
    logged: usize,
    /// Bytes the two streams and `host.log` may use per call together.
    cap: usize,
    /// Bytes dropped in this call.
    dropped: usize,
}

/// An instance's captured stdout and stderr. Cheap to clone.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    /// The buffers.
    capture: Arc<Mutex<Capture>>,
    /// Bytes dropped over the plugin version's life (for metrics); shared
    /// by all instances of a version.
    dropped_total: Arc<AtomicU64>,
    /// Set when anything was written or logged since the last flush, so
    /// that the flush after every call costs one atomic load when the
    /// guest was quiet (the usual case).
    touched: Arc<AtomicBool>,
}

impl GuestOutput {
    /// Output capped at `cap` bytes per call, counting drops in
    /// `dropped_total`.
    pub(crate) fn new(cap: usize, dropped_total: Arc<AtomicU64>) -> GuestOutput {
        GuestOutput {
            capture: Arc::new(Mutex::new(Capture {
                streams: Default::default(),
                logged: 0,
                cap,
                dropped: 0,
            })),
            dropped_total,
            touched: Arc::default(),
        }
    }

    /// The WASI stream for stdout (`0`) or stderr (`1`).
    pub(crate) fn stream(&self, index: usize) -> GuestStream {
        GuestStream {
            output: self.clone(),
            index,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Capture> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what the call printed to the log and empties the buffers.
    /// Cheap when nothing was printed.
    pub(crate) fn flush(&self, plugin: &str, session: Option<u64>) {
        if !self.touched.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut capture = self.lock();
        capture.logged = 0;
        if capture.streams.iter().all(|s| s.data.is_empty()) && capture.dropped == 0 {
            return;
        }
        for (index, stream) in capture.streams.iter_mut().enumerate() {
            let data = std::mem::take(&mut stream.data);
            for line in data.split(|b| *b == b'\n') {
                let line = String::from_utf8_lossy(line);
                let line = line.trim_end_matches('\r');
                if line.is_empty() {
                    continue;
                }
                let line = cut(line);
                if index == 0 {
                    tracing::info!(plugin, session, stream = "stdout", "{line}");
                } else {
                    tracing::warn!(plugin, session, stream = "stderr", "{line}");
                }
            }
        }
        if capture.dropped > 0 {
            tracing::warn!(
                plugin,
                session,
                "guest output over output_bytes_per_call ({} bytes): {} bytes dropped",
                capture.cap,
                capture.dropped
            );
            capture.dropped = 0;
        }
    }

    /// What the guest wrote to stderr in the call so far, for the error of
    /// a call that trapped: a guest's panic message or exception (Rust
    /// writes `panicked at FILE:LINE:COL:` and the message, Python a
    /// traceback whose last line is the exception). Lines are joined with
    /// ` / ` (a line ending in `:` runs on into the next), Rust's
    /// `note: run with RUST_BACKTRACE` hint is left out, and
    /// the text is cut to `max` bytes from its end (the end of a traceback
    /// says most). `None` when the guest wrote nothing to stderr.
    pub(crate) fn stderr_excerpt(&self, max: usize) -> Option<String> {
        if !self.touched.load(Ordering::Relaxed) {
            return None;
        }
        let capture = self.lock();
        let text = String::from_utf8_lossy(&capture.streams[1].data);
        let mut joined = String::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        {
            // `thread '<unnamed>' (1) panicked at`: a guest has one thread,
            // its name and id say nothing.
            let line = match line.find("panicked at ") {
                Some(at) if line.starts_with("thread '") => &line[at..],
                _ => line,
            };
            if !joined.is_empty() {
                // `panicked at FILE:LINE:COL:` runs on into its message.
                joined.push_str(if joined.ends_with(':') { " " } else { " / " });
            }
            joined.push_str(line);
        }
        if joined.is_empty() {
            return None;
        }
        if joined.len() <= max {
            return Some(joined);
        }
        let mut start = joined.len() - max;
        while !joined.is_char_boundary(start) {
            start += 1;
        }
        Some(format!("…{}", &joined[start..]))
    }

    /// Whether a `host.log` message of `len` bytes fits in this call's
    /// output budget; if not, it is counted as dropped.
    pub(crate) fn admit_log(&self, len: usize) -> bool {
        self.touched.store(true, Ordering::Relaxed);
        let mut capture = self.lock();
        let used = capture.used();
        if used + len <= capture.cap {
            capture.logged += len;
            true
        } else {
            capture.dropped += len;
            self.dropped_total.fetch_add(len as u64, Ordering::Relaxed);
            false
        }
    }

    /// Keeps what fits under the cap, counts the rest.
    fn write(&self, index: usize, bytes: &[u8]) {
        self.touched.store(true, Ordering::Relaxed);
        let mut capture = self.lock();
        let used = capture.used();
        let room = capture.cap.saturating_sub(used);
        let kept = bytes.len().min(room);
        capture.streams[index]
            .data
            .extend_from_slice(&bytes[..kept]);
        let dropped = bytes.len() - kept;
        if dropped > 0 {
            capture.dropped += dropped;
            self.dropped_total
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}

impl Capture {
    /// Bytes of the per-call budget used so far.
    fn used(&self) -> usize {
        self.logged + self.streams.iter().map(|s| s.data.len()).sum::<usize>()
    }
}

/// Cuts `line` to [`MAX_LINE`] bytes at a character boundary.
fn cut(line: &str) -> std::borrow::Cow<'_, str> {
    cut_at(line, MAX_LINE)
}

/// Cuts `line` to `max` bytes at a character boundary, marking the cut.
pub(crate) fn cut_at(line: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if line.len() <= max {
        return line.into();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end]).into()
}

/// One of the two streams, as WASI sees it.
#[derive(Clone)]
pub(crate) struct GuestStream {
    output: GuestOutput,
    index: usize,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Always ready: writes never wait.
#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.output.write(self.index, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // WASI's usual permit; over the cap bytes are accepted and dropped,
        // so a chatty guest never blocks or fails.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.output.write(self.index, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_cap_is_counted_and_dropped() {
        let total = Arc::new(AtomicU64::new(0));
        let out = GuestOutput::new(10, total.clone());
        out.write(0, b"hello\n");
        out.write(1, b"world, this is long\n");
        assert_eq!(total.load(Ordering::Relaxed), 16);
        let capture = out.lock();
        assert_eq!(capture.streams[0].data, b"hello\n");
        assert_eq!(capture.streams[1].data, b"worl");
    }

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let line = "é".repeat(MAX_LINE);
        let cut = cut(&line);
        assert!(cut.len() <= MAX_LINE + "…".len());
        assert!(cut.ends_with('…'));
    }
}
