//! The node daemon's client: HTTP/1.1 over its unix socket, one connection per request
//! (`Connection: close`), each request bounded by one overall deadline.
//!
//! Hand-written on purpose: the plugins run once per pod interface and must stay small, start
//! fast and never pull in an async runtime for this. [`parse_response`] is the pure half (tested
//! on bytes); [`UnixClient`] is the thin I/O shell around it. Each plugin puts its own typed calls
//! on top of [`UnixClient::call`] and [`UnixClient::call_raw`].

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use spiderpool_agent_api::{ErrorResponse, codes};
use thiserror::Error;

use crate::cni::{CniError, Command};

/// The largest response we accept (a pod's allocation is a few hundred bytes).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// What went wrong talking to the daemon.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Could not connect (socket missing, nobody listening, permission).
    #[error("node daemon unreachable at {path}: {source}")]
    Unreachable {
        /// Socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// Connected, but the exchange broke off.
    #[error("talking to the node daemon at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// The read or write error.
        #[source]
        source: io::Error,
    },
    /// No complete answer within the deadline.
    #[error("node daemon at {path} did not answer within {after:?}")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// The deadline.
        after: Duration,
    },
    /// The bytes that came back are not HTTP we understand, or the body is not the expected JSON.
    #[error("node daemon sent a malformed answer: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The daemon answered with a non-2xx status.
    #[error("node daemon answered HTTP {status}: {}", error.msg)]
    Status {
        /// HTTP status.
        status: u16,
        /// Its error body (or one made up from a body that was not an [`ErrorResponse`]).
        error: ErrorResponse,
        /// Whether the body was a proper [`ErrorResponse`] carrying a CNI code.
        coded: bool,
    },
}

impl ClientError {
    /// The CNI error to report for a failed `command`. Transport failures are "try again later"
    /// (code 11): the daemon is restarting or overloaded, and the runtime retries. A coded
    /// [`ErrorResponse`] is passed through as is; an uncoded 503 is also code 11.
    pub fn to_cni(self, command: Command) -> CniError {
        match self {
            Self::Unreachable { .. } | Self::Io { .. } | Self::Timeout { .. } => {
                CniError::new(codes::TRY_AGAIN_LATER, format!("{command}: {self}"), "")
            }
            Self::Malformed { .. } => CniError::new(codes::INTERNAL, format!("{command}: {self}"), ""),
            Self::Status {
                error: body,
                coded: true,
                ..
            } => CniError::new(body.code, body.msg, body.details),
            Self::Status {
                status,
                error: body,
                coded: false,
            } => {
                let code = if status == 503 {
                    codes::TRY_AGAIN_LATER
                } else {
                    codes::INTERNAL
                };
                CniError::new(
                    code,
                    format!("{command}: node daemon answered HTTP {status}: {}", body.msg),
                    "",
                )
            }
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body, de-chunked.
    pub body: Vec<u8>,
}

/// How far [`parse_response`] got with the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// A whole response.
    Complete(HttpResponse),
    /// More bytes are needed.
    Incomplete,
}

/// Parses an HTTP/1.x response from the bytes read so far. `at_eof` says the peer closed the
/// connection: a body without `Content-Length` or chunking then ends there.
pub fn parse_response(bytes: &[u8], at_eof: bool) -> Result<Parse, ClientError> {
    let Some(head_end) = find(bytes, b"\r\n\r\n") else {
        return if at_eof {
            Err(malformed("connection closed before the end of the headers"))
        } else {
            Ok(Parse::Incomplete)
        };
    };
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| malformed("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(protocol), Some(code)) = (parts.next(), parts.next()) else {
        return Err(malformed(&format!("bad status line {status_line:?}")));
    };
    if !protocol.starts_with("HTTP/1.") {
        return Err(malformed(&format!("bad status line {status_line:?}")));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| malformed(&format!("bad status line {status_line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed(&format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| malformed(&format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .to_ascii_lowercase()
                .split(',')
                .any(|coding| coding.trim() == "chunked");
        }
    }
    let rest = &bytes[head_end + 4..];
    // 1xx, 204 and 304 carry no body whatever the headers say.
    if status < 200 || status == 204 || status == 304 {
        return Ok(Parse::Complete(HttpResponse {
            status,
            body: Vec::new(),
        }));
    }
    if chunked {
        return match dechunk(rest)? {
            Some(body) => Ok(Parse::Complete(HttpResponse { status, body })),
            None if at_eof => Err(malformed("connection closed inside a chunked body")),
            None => Ok(Parse::Incomplete),
        };
    }
    match content_length {
        Some(length) if rest.len() >= length => Ok(Parse::Complete(HttpResponse {
            status,
            body: rest[..length].to_vec(),
        })),
        Some(_) if at_eof => Err(malformed("connection closed before the end of the body")),
        Some(_) => Ok(Parse::Incomplete),
        None if at_eof => Ok(Parse::Complete(HttpResponse {
            status,
            body: rest.to_vec(),
        })),
        None => Ok(Parse::Incomplete),
    }
}

/// Decodes a chunked body; `None` while the terminating zero-size chunk has not arrived.
fn dechunk(mut bytes: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(bytes, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&bytes[..line_end]).map_err(|_| malformed("bad chunk size"))?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| malformed(&format!("bad chunk size {size_text:?}")))?;
        let data_start = line_end + 2;
        if size == 0 {
            // Trailers (rare) end with an empty line; we do not need them, only the body.
            return Ok(Some(body));
        }
        // The answer is bounded anyway; refusing a huge size here also keeps the arithmetic below
        // far from overflowing.
        if size > MAX_RESPONSE_BYTES {
            return Err(malformed("chunk larger than 4 MiB"));
        }
        let data_end = data_start + size;
        if bytes.len() < data_end + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&bytes[data_start..data_end]);
        if &bytes[data_end..data_end + 2] != b"\r\n" {
            return Err(malformed("chunk not followed by CRLF"));
        }
        bytes = &bytes[data_end + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn malformed(reason: &str) -> ClientError {
    ClientError::Malformed {
        reason: reason.to_owned(),
    }
}

/// Builds the request bytes.
pub fn render_request(method: &str, target: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: spiderpool-agent\r\nUser-Agent: spiderpool-cni\r\n\
         Accept: application/json\r\nConnection: close\r\n"
    )
    .into_bytes();
    match body {
        Some(body) => {
            request.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(body);
        }
        None => request.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
    request
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass through).
pub fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Turns a non-2xx answer into [`ClientError::Status`]. The body is normally an
/// [`ErrorResponse`]; an upstream agent answers a bare JSON string, anything else is kept as text.
pub fn status_error(response: &HttpResponse) -> ClientError {
    let status = response.status;
    if let Ok(error) = serde_json::from_slice::<ErrorResponse>(&response.body) {
        return ClientError::Status {
            status,
            error,
            coded: true,
        };
    }
    let msg = serde_json::from_slice::<String>(&response.body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&response.body);
        let text = text.trim();
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            text.chars().take(512).collect()
        }
    });
    let error = ErrorResponse {
        code: codes::INTERNAL,
        msg,
        details: String::new(),
    };
    ClientError::Status {
        status,
        error,
        coded: false,
    }
}

/// The real client.
#[derive(Debug, Clone)]
pub struct UnixClient {
    socket_path: PathBuf,
    timeout: Duration,
}

impl UnixClient {
    /// A client of the daemon listening on `socket_path`; every request must finish within `timeout`.
    pub fn new(socket_path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket_path: socket_path.into(),
            timeout,
        }
    }

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// One request/response exchange.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, ClientError> {
        // A timeout too large to add to the clock (a netconf may say anything) means no deadline
        // in practice; it must not be a crash.
        let deadline = Instant::now().checked_add(self.timeout);
        let path = &self.socket_path;
        let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
            path: path.clone(),
            source,
        })?;
        let io_error = |source: io::Error| {
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                ClientError::Timeout {
                    path: path.clone(),
                    after: self.timeout,
                }
            } else {
                ClientError::Io {
                    path: path.clone(),
                    source,
                }
            }
        };
        let remaining = || {
            deadline
                .map_or(Some(self.timeout), |deadline| {
                    deadline.checked_duration_since(Instant::now())
                })
                .filter(|left| !left.is_zero())
                .ok_or_else(|| ClientError::Timeout {
                    path: path.clone(),
                    after: self.timeout,
                })
        };
        stream.set_write_timeout(Some(remaining()?)).map_err(io_error)?;
        stream
            .write_all(&render_request(method, target, body))
            .map_err(io_error)?;
        let mut received = Vec::with_capacity(1024);
        let mut buffer = [0_u8; 8192];
        loop {
            stream.set_read_timeout(Some(remaining()?)).map_err(io_error)?;
            let count = match stream.read(&mut buffer) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(io_error(error)),
            };
            received.extend_from_slice(&buffer[..count]);
            if received.len() > MAX_RESPONSE_BYTES {
                return Err(malformed("answer larger than 4 MiB"));
            }
            if let Parse::Complete(response) = parse_response(&received, count == 0)? {
                return Ok(response);
            }
        }
    }

    /// One request with an optional JSON body; a 2xx answer's body decoded as `T`, anything else
    /// as [`ClientError::Status`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let response = self.call_raw(method, target, body)?;
        if !(200..300).contains(&response.status) {
            return Err(status_error(&response));
        }
        decode(&response.body)
    }

    /// One request with an optional JSON body; the answer as is, whatever its status.
    pub fn call_raw(
        &self,
        method: &str,
        target: &str,
        body: Option<&impl Serialize>,
    ) -> Result<HttpResponse, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| malformed(&format!("encoding the request: {error}")))?;
        self.request(method, target, body.as_deref())
    }
}

/// A body decoded as `T`, or [`ClientError::Malformed`] quoting its start.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|error| {
        malformed(&format!(
            "{error} in {:?}",
            String::from_utf8_lossy(&body[..body.len().min(256)])
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8], at_eof: bool) -> HttpResponse {
        match parse_response(bytes, at_eof).unwrap() {
            Parse::Complete(response) => response,
            Parse::Incomplete => panic!("incomplete: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn content_length_bodies() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            complete(bytes, false),
            HttpResponse {
                status: 200,
                body: b"{}".to_vec()
            }
        );
        // Short of the announced length: wait for more, unless the peer closed.
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}";
        assert_eq!(parse_response(short, false).unwrap(), Parse::Incomplete);
        assert!(matches!(
            parse_response(short, true),
            Err(ClientError::Malformed { .. })
        ));
    }

    #[test]
    fn chunked_bodies() {
        let bytes = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n\
                      4\r\n{\"co\r\na;ext=1\r\nde\":11,\"ms\r\n7\r\ng\":\"x\"}\r\n0\r\n\r\n";
        let response = complete(bytes, false);
        assert_eq!(response.status, 500);
        assert_eq!(response.body, br#"{"code":11,"msg":"x"}"#);
        let partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"co";
        assert_eq!(parse_response(partial, false).unwrap(), Parse::Incomplete);
        assert!(parse_response(partial, true).is_err());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad, false).is_err());
    }

    #[test]
    fn bodies_delimited_by_close() {
        let bytes = b"HTTP/1.0 200 OK\r\n\r\n{\"ips\":[]}";
        assert_eq!(parse_response(bytes, false).unwrap(), Parse::Incomplete);
        assert_eq!(complete(bytes, true).body, br#"{"ips":[]}"#);
        assert_eq!(complete(b"HTTP/1.1 204 No Content\r\n\r\n", false).body, b"");
    }

    #[test]
    fn garbage_is_malformed() {
        for bytes in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(bytes, false), Err(ClientError::Malformed { .. })),
                "{bytes:?}"
            );
        }
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
        assert_eq!(parse_response(b"HTTP/1.1 200", false).unwrap(), Parse::Incomplete);
    }

    #[test]
    fn requests_carry_length_and_close() {
        let request = String::from_utf8(render_request("POST", "/v1/ipam/ip", Some(b"{\"a\":1}"))).unwrap();
        assert!(request.starts_with("POST /v1/ipam/ip HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nConnection: close\r\n"));
        assert!(request.contains("\r\nContent-Length: 7\r\n"));
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"));
        let get = String::from_utf8(render_request("GET", "/v1/ipam/healthy", None)).unwrap();
        assert!(get.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query_value("kube-system"), "kube-system");
        assert_eq!(encode_query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn error_bodies_of_every_kind() {
        let coded = HttpResponse {
            status: 500,
            body: br#"{"code":102,"msg":"pools exhausted","details":"p1"}"#.to_vec(),
        };
        let ClientError::Status {
            status,
            error,
            coded: true,
        } = status_error(&coded)
        else {
            panic!()
        };
        assert_eq!(
            (status, error.code, error.msg.as_str(), error.details.as_str()),
            (500, 102, "pools exhausted", "p1")
        );
        let upstream = HttpResponse {
            status: 500,
            body: br#""failed to allocate""#.to_vec(),
        };
        let ClientError::Status {
            error, coded: false, ..
        } = status_error(&upstream)
        else {
            panic!()
        };
        assert_eq!((error.code, error.msg.as_str()), (999, "failed to allocate"));
        let empty = HttpResponse {
            status: 503,
            body: vec![],
        };
        let ClientError::Status { error, .. } = status_error(&empty) else {
            panic!()
        };
        assert_eq!(error.msg, "HTTP 503");
    }

    #[test]
    fn a_chunk_size_near_the_end_of_the_address_space_is_malformed() {
        // data start (18) + size reaches usize::MAX exactly; the CRLF after it would overflow.
        let size = format!("{:x}", usize::MAX - 18);
        let bytes = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nxy");
        assert!(matches!(
            parse_response(bytes.as_bytes(), false),
            Err(ClientError::Malformed { .. })
        ));
        for size in ["ffffffffffffffff", "7fffffffffffffff", "400001"] {
            let bytes = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nxy");
            assert!(
                matches!(
                    parse_response(bytes.as_bytes(), false),
                    Err(ClientError::Malformed { .. })
                ),
                "{size}"
            );
        }
    }

    #[test]
    fn a_huge_timeout_is_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let client = UnixClient::new(dir.path().join("absent.sock"), Duration::MAX);
        let error = client.call_raw("GET", "/", None::<&()>).unwrap_err();
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error:?}");
    }

    #[test]
    fn a_missing_socket_is_unreachable_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let client = UnixClient::new(&path, Duration::from_secs(1));
        let error = client
            .call_raw("GET", "/v1/ipam/healthy", None::<&()>)
            .unwrap_err();
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error:?}");
        assert!(error.to_string().contains("absent.sock"), "{error}");
    }
}
