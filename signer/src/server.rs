//! The signer's socket: one thread per connection, frames in, frames out.
//!
//! Only the daemon's uid may connect (`SO_PEERCRED`); anything else is
//! refused and logged. A frame that cannot be decoded gets one `Protocol`
//! error answer and closes that connection; the signer keeps serving every
//! other connection.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use castellan_proto::frame::{FrameError, decode_payload, read_payload};
use castellan_proto::{ErrorKind, RequestFrame, Response, ResponseFrame, SignerError, write_frame};

use crate::service::Signer;

/// Most connections served at once; the daemon keeps a small pool.
pub const MAX_CONNECTIONS: usize = 128;

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
        let signer = Arc::clone(&signer);
        let active_c = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("signer-conn".into())
            .spawn(move || {
                connection(&signer, stream);
                active_c.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
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
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    loop {
        let frame = read_payload(&mut reader).and_then(|p| decode_payload::<RequestFrame>(&p));
        let (id, response, close) = match frame {
            Ok(f) => {
                let kind = f.request.kind();
                let response = signer.handle(f.request);
                if let Response::Error(e) = &response {
                    tracing::info!(request = kind, kind = ?e.kind, "request refused: {}", e.message);
                }
                (f.id, response, false)
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
        if write_frame(&mut writer, &ResponseFrame { id, response }).is_err() {
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
