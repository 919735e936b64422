//! Whole-body reads and writes over `wasi:io/streams`.

use wasip2::http::types::{IncomingBody, OutgoingBody};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// The most `blocking-write-and-flush` accepts in one call: WASI 0.2 only
/// guarantees 4096 bytes, and the host traps a guest that writes more than
/// `check-write` permits.
const WRITE_CHUNK: usize = 4096;

/// How much to ask for per read; the host may return less.
const READ_CHUNK: u64 = 64 * 1024;

/// Reads an incoming body to its end.
///
/// Trailers are ignored. The error is the host's description of the failure.
pub(crate) fn read_incoming(body: IncomingBody) -> Result<Vec<u8>, String> {
    let stream = body
        .stream()
        .map_err(|()| "the body stream was already taken".to_owned())?;
    let bytes = read_to_end(&stream);
    // The stream is a child of the body: it must go first.
    drop(stream);
    drop(body);
    bytes
}

fn read_to_end(stream: &InputStream) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(error.to_debug_string());
            }
        }
    }
}

/// Writes all of `bytes` to an outgoing body and finishes it (no trailers).
///
/// The body must be finished even when empty: the host treats a body that is
/// dropped unfinished as incomplete and fails the message.
pub(crate) fn write_outgoing(body: OutgoingBody, bytes: &[u8]) -> Result<(), String> {
    let stream = body
        .write()
        .map_err(|()| "the body stream was already taken".to_owned())?;
    let written = write_all(&stream, bytes);
    drop(stream);
    written?;
    OutgoingBody::finish(body, None).map_err(|code| crate::fetch::describe(&code))
}

fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), String> {
    for chunk in bytes.chunks(WRITE_CHUNK) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| match e {
                StreamError::Closed => "the stream was closed".to_owned(),
                StreamError::LastOperationFailed(error) => error.to_debug_string(),
            })?;
    }
    Ok(())
}
