//! Bounded, rotating per-instance logs of a guest's stdout and stderr.
//!
//! A guest writes as much as it likes; the log keeps the newest lines up to a
//! byte cap and drops the oldest (counting what was dropped), so a chatty or
//! hostile guest costs the host a fixed amount of memory. Readers get lines
//! with timestamps and sequence numbers, which is what `kubectl logs` needs
//! for `--tail`, `--since` and `-f`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use tokio::sync::watch;

/// Default cap on one log's retained bytes.
pub const DEFAULT_LOG_CAPACITY: usize = 1 << 20;

/// A line longer than this is split: a guest that never writes a newline
/// still produces bounded, readable lines.
const MAX_LINE: usize = 16 << 10;

/// Which stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

/// One line of guest output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the log, starting at 0 and never reused.
    pub seq: u64,
    /// When the line was completed.
    pub time: SystemTime,
    /// The stream it was written to.
    pub stream: Stream,
    /// The text, without its trailing newline (invalid UTF-8 replaced).
    pub text: String,
}

/// A bounded log shared by an instance's stdout and stderr.
///
/// Cloning is cheap and every clone is the same log.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Mutex<Inner>>,
    // The next sequence number: watchers wake when a line is added.
    seq_tx: Arc<watch::Sender<u64>>,
}

struct Inner {
    lines: VecDeque<LogLine>,
    bytes: usize,
    capacity: usize,
    next_seq: u64,
    dropped: u64,
    partial: [Vec<u8>; 2],
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Log")
            .field("lines", &inner.lines.len())
            .field("bytes", &inner.bytes)
            .field("capacity", &inner.capacity)
            .finish()
    }
}

impl Default for Log {
    fn default() -> Self {
        Log::new(DEFAULT_LOG_CAPACITY)
    }
}

impl Log {
    /// A log keeping at most `capacity` bytes of line text.
    pub fn new(capacity: usize) -> Log {
        Log {
            inner: Arc::new(Mutex::new(Inner {
                lines: VecDeque::new(),
                bytes: 0,
                capacity,
                next_seq: 0,
                dropped: 0,
                partial: [Vec::new(), Vec::new()],
            })),
            seq_tx: Arc::new(watch::channel(0).0),
        }
    }

    /// Appends raw output from `stream`; complete lines become visible.
    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut inner = self.inner.lock();
        let slot = stream as usize;
        while !bytes.is_empty() {
            let room = MAX_LINE - inner.partial[slot].len();
            let (take, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= room => (nl + 1, true),
                _ if bytes.len() >= room => (room, true),
                _ => (bytes.len(), false),
            };
            let (chunk, rest) = bytes.split_at(take);
            bytes = rest;
            inner.partial[slot].extend_from_slice(chunk);
            if complete {
                let mut line = std::mem::take(&mut inner.partial[slot]);
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                inner.push(stream, line);
            }
        }
        let next = inner.next_seq;
        drop(inner);
        self.seq_tx.send_replace(next);
    }

    /// Makes any unterminated output visible as a final line (the guest
    /// exited mid-line).
    pub fn flush(&self) {
        let mut inner = self.inner.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut inner.partial[stream as usize]);
            if !line.is_empty() {
                inner.push(stream, line);
            }
        }
        let next = inner.next_seq;
        drop(inner);
        self.seq_tx.send_replace(next);
    }

    /// Lines with `seq >= from`, oldest first.
    pub fn since(&self, from: u64) -> Vec<LogLine> {
        let inner = self.inner.lock();
        let first = inner.lines.front().map_or(inner.next_seq, |l| l.seq);
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        inner.lines.iter().skip(skip).cloned().collect()
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let inner = self.inner.lock();
        let skip = inner.lines.len().saturating_sub(n);
        inner.lines.iter().skip(skip).cloned().collect()
    }

    /// The retained text, both streams, one line per line: for tests and
    /// simple callers.
    pub fn text(&self) -> String {
        self.tail(usize::MAX)
            .into_iter()
            .map(|l| l.text + "\n")
            .collect()
    }

    /// How many lines were dropped to keep within the capacity.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().dropped
    }

    /// Bytes of line text retained now (never more than the capacity).
    pub fn retained_bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// A receiver of the next sequence number, which changes whenever a
    /// line is added: for following a log (`kubectl logs -f`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    /// A writer for one stream, as handed to the guest.
    pub fn writer(&self, stream: Stream) -> LogWriter {
        LogWriter {
            log: self.clone(),
            stream,
        }
    }
}

impl Inner {
    fn push(&mut self, stream: Stream, line: Vec<u8>) {
        let text = String::from_utf8_lossy(&line).into_owned();
        self.bytes += text.len();
        self.lines.push_back(LogLine {
            seq: self.next_seq,
            time: SystemTime::now(),
            stream,
            text,
        });
        self.next_seq += 1;
        while self.bytes > self.capacity {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.text.len();
            self.dropped += 1;
        }
    }
}

/// One stream of a [`Log`], implementing the guest's stdout or stderr.
#[derive(Clone, Debug)]
pub struct LogWriter {
    log: Log,
    stream: Stream,
}

impl AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogWriter {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogWriter {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_writes_and_streams() {
        let log = Log::new(1024);
        log.write(Stream::Stdout, b"hel");
        log.write(Stream::Stderr, b"err\n");
        log.write(Stream::Stdout, b"lo\nworld");
        assert_eq!(log.text(), "err\nhello\n");
        log.flush();
        let lines = log.tail(10);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].stream, Stream::Stderr);
        assert_eq!(lines[2].text, "world");
        assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn drops_oldest_lines_beyond_capacity() {
        let log = Log::new(100);
        for i in 0..50 {
            log.write(Stream::Stdout, format!("line {i:04}\n").as_bytes());
        }
        assert!(log.retained_bytes() <= 100);
        let lines = log.tail(usize::MAX);
        assert_eq!(lines.last().unwrap().text, "line 0049");
        assert_eq!(lines.len() as u64 + log.dropped(), 50);
        // `since` counts from sequence numbers, not positions.
        assert_eq!(log.since(48).len(), 2);
        assert_eq!(log.since(0).len(), lines.len());
    }

    #[test]
    fn splits_a_line_without_newlines() {
        let log = Log::new(1 << 20);
        log.write(Stream::Stdout, &vec![b'x'; MAX_LINE * 2 + 5]);
        log.flush();
        let lens: Vec<_> = log.tail(10).iter().map(|l| l.text.len()).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 5]);
    }
}
