//! A small blocking HTTP/1.1 client of the admin socket, for `castellanctl`
//! and tests. One request per connection (`Connection: close`); responses
//! with `Content-Length`, chunked, or delimited by the end of the stream.
//! Every failure is an [`ApiError`], so the CLI maps it to an exit code in
//! one place ([`ErrorKind::exit_code`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{ApiError, ErrorBody, ErrorKind};

/// Where castellan listens by default.
pub const DEFAULT_SOCKET: &str = "/run/castellan/admin.sock";

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 256 * 1024 * 1024;

/// A raw answer, for callers that want the status and headers.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AdminClient {
    /// A client of the admin socket at `socket`; answers are awaited for at
    /// most 5 minutes (a CA ceremony on a slow token takes a while).
    pub fn new(socket: impl Into<PathBuf>) -> AdminClient {
        AdminClient {
            socket: socket.into(),
            timeout: Duration::from_secs(300),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let r = self.request("GET", path, None)?;
        decode(r)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("cannot encode the request: {e}"),
            )
        })?;
        let r = self.request("POST", path, Some(&body))?;
        decode(r)
    }

    fn unreachable(&self, e: &std::io::Error) -> ApiError {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "; your user may not open the socket (ask an admin for access to it)"
        } else {
            "; is castellan running? (systemctl status castellan)"
        };
        ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "cannot reach castellan at {}: {e}{hint}",
                self.socket.display()
            ),
        )
    }

    fn broken(&self, e: std::io::Error) -> ApiError {
        if e.kind() == std::io::ErrorKind::InvalidData {
            return ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "{} did not answer as castellan's admin API ({e}); is it castellan's admin \
                     socket? ([admin] socket in castellan's configuration, default \
                     {DEFAULT_SOCKET}; castellan-signer's socket is only for `castellanctl \
                     signer …`)",
                    self.socket.display()
                ),
            );
        }
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "castellan at {} did not answer within {}s; the operation may still \
                     complete: check with `castellanctl audit log` before retrying",
                    self.socket.display(),
                    self.timeout.as_secs()
                ),
            );
        }
        ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "the connection to castellan at {} broke: {e}; is castellan running? \
                 (systemctl status castellan)",
                self.socket.display()
            ),
        )
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<RawResponse, ApiError> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| self.unreachable(&e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.unreachable(&e))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: castellan\r\nConnection: close\r\n\
             Accept: application/json\r\nUser-Agent: castellanctl/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or_default());
        stream.write_all(&out).map_err(|e| self.broken(e))?;
        read_response(&mut BufReader::new(stream)).map_err(|e| self.broken(e))
    }
}

fn invalid(m: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.into())
}

fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> std::io::Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n > *budget {
        return Err(invalid("response head too large"));
    }
    *budget -= n;
    if !line.ends_with(b"\n") {
        return Err(invalid("response ended in the middle of its head"));
    }
    while line.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("response head is not text"))
}

/// Parses an HTTP/1.1 response (status line, headers, body).
pub fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<RawResponse> {
    let mut budget = MAX_HEAD;
    let status_line = read_line(r, &mut budget)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("not an HTTP answer: {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("malformed status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("malformed header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let chunked = get("transfer-encoding").is_some_and(|v| {
        v.to_ascii_lowercase()
            .split(',')
            .any(|t| t.trim() == "chunked")
    });
    let body = if chunked {
        read_chunked(r)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("malformed Content-Length {len:?}")))?;
        if len > MAX_BODY {
            return Err(invalid(format!(
                "response body of {len} octets is too large"
            )));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        body
    } else {
        let mut body = Vec::new();
        r.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
        if body.len() > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        body
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn read_chunked<R: BufRead>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut budget = 1024;
        let line = read_line(r, &mut budget)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("malformed chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let mut budget = MAX_HEAD;
            while !read_line(r, &mut budget)?.is_empty() {}
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut budget = 2;
        if !read_line(r, &mut budget)?.is_empty() {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// A 2xx answer decoded as `T`; any other status as the [`ApiError`] it carries.
fn decode<T: DeserializeOwned>(r: RawResponse) -> Result<T, ApiError> {
    if (200..300).contains(&r.status) {
        return serde_json::from_slice(&r.body).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!(
                    "castellan's answer is not what this castellanctl expects ({e}); \
                     are castellan and castellanctl the same version?"
                ),
            )
        });
    }
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(&r.body) {
        return Err(b.error);
    }
    let kind = match r.status {
        400 | 405 => ErrorKind::BadRequest,
        401 | 403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Refused,
        413 => ErrorKind::TooLarge,
        503 => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    let text = String::from_utf8_lossy(&r.body);
    let text: String = text.chars().take(200).collect();
    Err(ApiError::new(
        kind,
        format!("castellan answered HTTP {}: {}", r.status, text.trim()),
    ))
}

/// Percent-encodes one path segment or query value (RFC 3986 unreserved
/// characters pass).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&…` of the pairs that have a value, or the empty string.
pub fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{}={}", encode_component(k), encode_component(v)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_content_length_answers_are_read_whole() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        let r = read_response(&mut &raw[..]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello world");
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcdef";
        let r = read_response(&mut &raw[..]).unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"abc"[..]));
    }

    #[test]
    fn a_truncated_answer_is_an_error_not_a_panic() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..],
            b"HTTP/1.1 200",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(read_response(&mut &raw[..]).is_err());
        }
    }

    #[test]
    fn error_bodies_become_their_api_error() {
        let r = RawResponse {
            status: 403,
            headers: vec![],
            body: br#"{"error":{"kind":"forbidden","message":"no"}}"#.to_vec(),
        };
        let e = decode::<serde_json::Value>(r).unwrap_err();
        assert_eq!(e, ApiError::new(ErrorKind::Forbidden, "no"));
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("a b/c%"), "a%20b%2Fc%25");
        assert_eq!(
            query_string(&[("state", Some("revoked".into())), ("issuer", None)]),
            "?state=revoked"
        );
        assert_eq!(query_string(&[("issuer", None)]), "");
    }
}
