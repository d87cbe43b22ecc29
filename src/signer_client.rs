//! A blocking client of the signer socket (castellanctl and tests).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use castellan_proto::{
    Request, RequestFrame, Response, ResponseFrame, SignerError, read_frame, write_frame,
};

pub struct SignerClient {
    stream: UnixStream,
    next_id: u64,
}

#[derive(Debug)]
pub enum ClientError {
    /// The signer is not reachable or the connection broke.
    Unavailable(String),
    /// The signer refused the request.
    Refused(SignerError),
    /// The answer was not the one expected for the request.
    Unexpected(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unavailable(m) => write!(f, "signer unavailable: {m}"),
            ClientError::Refused(e) => write!(f, "signer refused: {}", e.message),
            ClientError::Unexpected(m) => write!(f, "unexpected answer from the signer: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl SignerClient {
    pub fn connect(path: &Path) -> Result<SignerClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            ClientError::Unavailable(format!(
                "cannot connect to {}: {e}; is castellan-signer running?",
                path.display()
            ))
        })?;
        // Generous: key generation on a hardware token can take seconds.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
        Ok(SignerClient { stream, next_id: 1 })
    }

    /// Sends one request and waits for its answer; a refusal becomes
    /// `ClientError::Refused`.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &RequestFrame { id, request })
            .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        let frame: ResponseFrame =
            read_frame(&mut self.stream).map_err(|e| ClientError::Unavailable(e.to_string()))?;
        match frame.response {
            Response::Error(e) => Err(ClientError::Refused(e)),
            _ if frame.id != id => Err(ClientError::Unexpected(format!(
                "answer to request {} instead of {id}",
                frame.id
            ))),
            r => Ok(r),
        }
    }
}
