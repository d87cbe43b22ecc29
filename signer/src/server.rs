//! The signer's socket: one thread per connection, frames in, frames out.
//!
//! Only the daemon's uid may connect (`SO_PEERCRED`); anything else is
//! refused and logged. A frame that cannot be decoded gets one `Protocol`
//! error answer and closes that connection; the signer keeps serving every
//! other connection. So does a peer that stops in the middle of a frame for
//! longer than [`FRAME_DEADLINE`]. A panic while handling a request is
//! answered with an `Internal` error and logged; the connection slot is
//! given back however a connection thread ends.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use castellan_proto::frame::{FrameError, decode_payload, read_payload};
use castellan_proto::{ErrorKind, RequestFrame, Response, ResponseFrame, SignerError, write_frame};

use crate::service::Signer;

/// Most connections served at once; the daemon keeps a small pool.
pub const MAX_CONNECTIONS: usize = 128;

/// Longest time a frame may take to arrive once its first octet has: a peer
/// that stops in the middle of a frame is dropped after this, so it cannot
/// hold a connection thread (and slot) forever. Idle connections between
/// frames are not limited (the daemon keeps a pool open). The daemon runs on
/// the same host and writes a frame in one go, even the largest (16 MiB) in
/// well under a second.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);

/// Releases a connection slot when the connection thread ends, however it
/// ends (a panic included).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The read half of a connection. Between frames a read blocks without a
/// limit; inside a frame every read from the socket is bounded by what is
/// left of [`FRAME_DEADLINE`] (`SO_RCVTIMEO`). A frame that arrived in one
/// read costs no extra system call: the timeout is only set when a frame
/// needs a second read, and cleared before the next wait between frames.
struct FrameStream {
    stream: UnixStream,
    /// When the frame being read must be complete; `None` between frames.
    deadline: Option<Instant>,
    /// Whether `SO_RCVTIMEO` is set on the socket.
    timeout_set: bool,
}

impl Read for FrameStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.deadline {
            None => {
                if self.timeout_set {
                    self.stream.set_read_timeout(None)?;
                    self.timeout_set = false;
                }
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(stalled());
                }
                self.stream.set_read_timeout(Some(left))?;
                self.timeout_set = true;
            }
        }
        self.stream.read(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => stalled(),
            _ => e,
        })
    }
}

fn stalled() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the peer sent part of a frame and then nothing for {}s; dropping the connection",
            FRAME_DEADLINE.as_secs()
        ),
    )
}

/// Reads one request frame: waits without a limit for its first octet, then
/// at most [`FRAME_DEADLINE`] for the rest.
fn read_request(reader: &mut BufReader<FrameStream>) -> Result<Vec<u8>, FrameError> {
    loop {
        match reader.fill_buf() {
            Ok([]) => return Err(FrameError::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e.to_string())),
        }
    }
    reader.get_mut().deadline = Some(Instant::now() + FRAME_DEADLINE);
    let payload = read_payload(reader);
    reader.get_mut().deadline = None;
    payload
}

/// Runs one request, containing a panic: the connection gets an `Internal`
/// error and the signer keeps serving.
fn handle_contained(signer: &Signer, request: RequestFrame) -> Response {
    let kind = request.request.kind();
    let id = request.id;
    contained(kind, id, || signer.handle(request.request))
}

/// Runs `handle`; a panic in it is logged and becomes an `Internal` error.
/// (Locks it held are recovered or refuse clearly, see `service`.)
fn contained(kind: &str, id: u64, handle: impl FnOnce() -> Response) -> Response {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(handle)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            tracing::error!(
                request = kind,
                id,
                panic = %what,
                "internal error: handling a request panicked; nothing was answered for it but this error"
            );
            Response::Error(SignerError {
                kind: ErrorKind::Internal,
                message: format!(
                    "internal error in the signer while handling a {kind} request ({what}); the request was not completed; report this with the signer's log"
                ),
            })
        }
    }
}

pub fn serve(signer: Arc<Signer>, listener: UnixListener, daemon_uid: u32) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let peer = match crate::sys::peer_credentials(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; connection refused");
                continue;
            }
        };
        if peer.uid != daemon_uid {
            tracing::warn!(
                peer_uid = peer.uid,
                peer_pid = peer.pid,
                expected_uid = daemon_uid,
                "connection from a uid that is not the daemon's refused"
            );
            refuse(
                stream,
                format!(
                    "uid {} may not use the signer; only the castellan daemon's uid may",
                    peer.uid
                ),
            );
            continue;
        }
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            tracing::warn!("connection limit reached; connection refused");
            refuse(
                stream,
                "the signer is serving too many connections; retry".into(),
            );
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(&active));
        let signer = Arc::clone(&signer);
        let spawned = std::thread::Builder::new()
            .name("signer-conn".into())
            .spawn(move || {
                let _slot = slot;
                connection(&signer, stream);
            });
        // On failure the closure, and with it the slot, was dropped.
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread");
        }
    }
}

fn refuse(mut stream: UnixStream, message: String) {
    let frame = ResponseFrame {
        id: 0,
        response: Response::Error(SignerError {
            kind: ErrorKind::Policy,
            message,
        }),
    };
    let _ = write_frame(&mut stream, &frame);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn connection(signer: &Signer, stream: UnixStream) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let read_half = FrameStream {
        stream: read_half,
        deadline: None,
        timeout_set: false,
    };
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    loop {
        let frame = read_request(&mut reader).and_then(|p| decode_payload::<RequestFrame>(&p));
        let (id, response, close) = match frame {
            Ok(f) => {
                let kind = f.request.kind();
                let id = f.id;
                let response = handle_contained(signer, f);
                if let Response::Error(e) = &response {
                    tracing::info!(request = kind, kind = ?e.kind, "request refused: {}", e.message);
                }
                (id, response, false)
            }
            Err(FrameError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "bad frame; closing this connection");
                (
                    0,
                    Response::Error(SignerError {
                        kind: ErrorKind::Protocol,
                        message: format!("bad frame: {e}; closing the connection"),
                    }),
                    true,
                )
            }
        };
        if write_answer(&mut writer, id, response).is_err() {
            break;
        }
        // Flush when no further request is already buffered, so pipelined
        // requests share one write.
        if (close || reader.buffer().is_empty()) && writer.flush().is_err() {
            break;
        }
        if close {
            break;
        }
    }
}

/// Writes the answer to request `id`. An answer too large for one frame is
/// replaced by an `Internal` error saying so, rather than closing the
/// connection without a word.
fn write_answer<W: Write>(w: &mut W, id: u64, response: Response) -> Result<(), FrameError> {
    match write_frame(w, &ResponseFrame { id, response }) {
        Err(FrameError::TooLarge(n)) => {
            tracing::error!(
                id,
                octets = n,
                "an answer was too large for one frame; answering with an error instead"
            );
            let response = Response::Error(SignerError {
                kind: ErrorKind::Internal,
                message: format!(
                    "the answer to this request was too large for one frame ({n} octets, the limit is {}); ask for less per request",
                    castellan_proto::frame::MAX_PAYLOAD
                ),
            });
            write_frame(w, &ResponseFrame { id, response })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castellan_proto::frame::MAX_PAYLOAD;

    fn decode(bytes: &[u8]) -> ResponseFrame {
        let mut r = bytes;
        let payload = read_payload(&mut r).expect("one frame");
        assert!(r.is_empty(), "one frame only");
        decode_payload(&payload).expect("a response frame")
    }

    #[test]
    fn an_answer_too_large_for_a_frame_becomes_an_internal_error_for_its_request() {
        let mut out = Vec::new();
        let huge = Response::CrlPart {
            bytes: vec![0x5a; MAX_PAYLOAD as usize + 1],
        };
        write_answer(&mut out, 41, huge).expect("an answer is written");
        let f = decode(&out);
        assert_eq!(f.id, 41);
        match f.response {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Internal);
                assert!(
                    e.message.contains("too large for one frame"),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
        // A small answer goes out as it is.
        let mut out = Vec::new();
        write_answer(&mut out, 7, Response::CrlPart { bytes: vec![1, 2] }).expect("written");
        assert!(matches!(decode(&out).response, Response::CrlPart { .. }));
    }

    #[test]
    fn a_panic_in_a_request_becomes_an_internal_error_and_frees_its_slot() {
        let r = contained("Status", 3, || panic!("boom at the edge"));
        match r {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Internal);
                assert!(e.message.contains("boom at the edge"), "{}", e.message);
            }
            other => panic!("expected an error, got {other:?}"),
        }
        // A connection thread that panics outside the contained handler
        // still gives its slot back.
        let active = Arc::new(AtomicUsize::new(1));
        let slot = Slot(Arc::clone(&active));
        let t = std::thread::spawn(move || {
            let _slot = slot;
            panic!("connection thread panics");
        });
        assert!(t.join().is_err());
        assert_eq!(active.load(Ordering::Acquire), 0);
    }
}
