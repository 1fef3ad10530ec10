//! The simulator's HTTP/1.1 wire layer: a connection stream (plain TCP or
//! native-tls), reading one request with hard limits (request line, header
//! count and size, body size; `Content-Length` bodies only), and writing one
//! response with `Content-Length` and keep-alive.
//!
//! Timeouts are socket read timeouts set by the caller; a request that
//! stalls mid-way ends the connection.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};

/// Limits on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line or header line, in bytes.
    pub max_line: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Most bytes of all header lines together.
    pub max_header_bytes: usize,
    /// Largest body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 8 * 1024,
            max_headers: 64,
            max_header_bytes: 32 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// A connection: plain TCP or TLS over TCP ([`crate::net::Stream`]).
pub use crate::net::Stream;

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (after `?`), possibly empty.
    pub query: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
    /// Whether the client asked to close after this request
    /// (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query parameter `name` (case-sensitive name; no %-decoding
    /// beyond what CWA's numeric/boolean parameters need).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Why a request could not be read. Each maps to the status the server
/// answers before closing ([`ReadError::status`]).
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between requests (no answer).
    Closed,
    /// Socket error or timeout (no answer).
    Io(io::Error),
    /// Request line not `METHOD TARGET HTTP/1.x` (400).
    BadRequestLine,
    /// A header line without a colon or not UTF-8 (400).
    BadHeader,
    /// Request line or headers over the limits (431, or 414 for the line).
    HeadersTooLarge,
    /// Request line too long (414).
    UriTooLong,
    /// Body over the limit (413).
    BodyTooLarge,
    /// Unsupported framing: chunked or otherwise (411/501).
    UnsupportedFraming,
    /// Unparseable `Content-Length` (400).
    BadContentLength,
}

impl ReadError {
    /// The HTTP status to answer with, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            ReadError::Closed | ReadError::Io(_) => None,
            ReadError::BadRequestLine | ReadError::BadHeader | ReadError::BadContentLength => {
                Some(400)
            }
            ReadError::HeadersTooLarge => Some(431),
            ReadError::UriTooLong => Some(414),
            ReadError::BodyTooLarge => Some(413),
            ReadError::UnsupportedFraming => Some(411),
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed => f.write_str("connection closed"),
            ReadError::Io(e) => write!(f, "i/o: {e}"),
            ReadError::BadRequestLine => f.write_str("malformed request line"),
            ReadError::BadHeader => f.write_str("malformed header line"),
            ReadError::HeadersTooLarge => f.write_str("headers over the limit"),
            ReadError::UriTooLong => f.write_str("request line over the limit"),
            ReadError::BodyTooLarge => f.write_str("body over the limit"),
            ReadError::UnsupportedFraming => f.write_str("only Content-Length bodies are accepted"),
            ReadError::BadContentLength => f.write_str("bad Content-Length"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads one line (up to `\n`) of at most `max` bytes, without the line end.
/// `Ok(None)` means EOF before any byte.
fn read_line<R: BufRead>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<()>, ReadError> {
    buf.clear();
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if available.is_empty() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))
            };
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max + 2 {
            return Err(ReadError::HeadersTooLarge);
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take);
        if done {
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            return Ok(Some(()));
        }
    }
}

/// Reads one request from `r` under `limits`.
pub fn read_request<R: BufRead>(r: &mut R, limits: &Limits) -> Result<Request, ReadError> {
    let mut line = Vec::with_capacity(256);
    // Tolerate one empty line before a request (RFC 9112 2.2).
    let mut got = read_line(r, limits.max_line, &mut line).map_err(|e| match e {
        ReadError::HeadersTooLarge => ReadError::UriTooLong,
        e => e,
    })?;
    if got.is_some() && line.is_empty() {
        got = read_line(r, limits.max_line, &mut line)?;
    }
    if got.is_none() {
        return Err(ReadError::Closed);
    }
    let request_line = std::str::from_utf8(&line).map_err(|_| ReadError::BadRequestLine)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::BadRequestLine);
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(ReadError::BadRequestLine);
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::BadRequestLine),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        close: http10,
    };
    let mut header_bytes = 0usize;
    loop {
        if read_line(r, limits.max_line, &mut line)?.is_none() {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if line.is_empty() {
            break;
        }
        header_bytes += line.len();
        if request.headers.len() >= limits.max_headers || header_bytes > limits.max_header_bytes {
            return Err(ReadError::HeadersTooLarge);
        }
        let text = std::str::from_utf8(&line).map_err(|_| ReadError::BadHeader)?;
        let (name, value) = text.split_once(':').ok_or(ReadError::BadHeader)?;
        if name.is_empty() || name.contains(' ') {
            return Err(ReadError::BadHeader);
        }
        request
            .headers
            .push((name.to_string(), value.trim().to_string()));
    }
    if let Some(conn) = request.header("Connection") {
        let conn = conn.to_ascii_lowercase();
        if conn.contains("close") {
            request.close = true;
        } else if conn.contains("keep-alive") {
            request.close = false;
        }
    }
    if request.header("Transfer-Encoding").is_some() {
        return Err(ReadError::UnsupportedFraming);
    }
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let length = match lengths.as_slice() {
        [] => 0,
        [one] => one
            .parse::<usize>()
            .map_err(|_| ReadError::BadContentLength)?,
        _ => return Err(ReadError::BadContentLength),
    };
    if length > limits.max_body {
        return Err(ReadError::BodyTooLarge);
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).map_err(ReadError::Io)?;
    request.body = body;
    Ok(request)
}

/// A response to write.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra header fields (Content-Length and Connection are added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    /// A response with a body of the given content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            close: false,
        }
    }

    /// A `text/xml` response.
    pub fn xml(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/xml; charset=utf-8", body)
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Marks the connection to be closed after this response.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }
}

/// The reason phrase for the statuses the simulator uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes `resp` in one buffer (one syscall for small responses).
pub fn write_response<W: Write>(w: &mut W, resp: &Response) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + resp.body.len());
    write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status))?;
    for (k, v) in &resp.headers {
        write!(out, "{k}: {v}\r\n")?;
    }
    write!(out, "Content-Length: {}\r\n", resp.body.len())?;
    out.extend_from_slice(if resp.close {
        b"Connection: close\r\n\r\n"
    } else {
        b"Connection: keep-alive\r\n\r\n"
    });
    out.extend_from_slice(&resp.body);
    w.write_all(&out)?;
    w.flush()
}

/// A buffered connection: reads through a `BufReader`, writes to the
/// stream underneath.
pub struct Connection {
    reader: BufReader<Stream>,
}

impl Connection {
    /// Wraps `stream` with a small read buffer.
    pub fn new(stream: Stream) -> Connection {
        Connection {
            reader: BufReader::with_capacity(4096, stream),
        }
    }

    /// Reads the next request.
    pub fn read_request(&mut self, limits: &Limits) -> Result<Request, ReadError> {
        read_request(&mut self.reader, limits)
    }

    /// Writes a response.
    pub fn write_response(&mut self, resp: &Response) -> io::Result<()> {
        write_response(self.reader.get_mut(), resp)
    }

    /// The stream underneath.
    pub fn stream(&self) -> &Stream {
        self.reader.get_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        read_request(&mut io::Cursor::new(raw.to_vec()), &Limits::default())
    }

    #[test]
    fn parses_a_post_with_body_and_query() {
        let r = parse(b"POST /cwa/x.ashx?Sid=3&AckId=7&UA=true HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
            .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/cwa/x.ashx");
        assert_eq!(r.query_param("AckId"), Some("7"));
        assert_eq!(r.query_param("UA"), Some("true"));
        assert_eq!(r.header("host"), Some("a"));
        assert_eq!(r.body, b"hello");
        assert!(!r.close);
    }

    #[test]
    fn refuses_bad_framing_and_oversize() {
        assert!(matches!(parse(b""), Err(ReadError::Closed)));
        assert!(matches!(
            parse(b"GARBAGE\r\n\r\n"),
            Err(ReadError::BadRequestLine)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2\r\n\r\n"),
            Err(ReadError::BadRequestLine)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"),
            Err(ReadError::BadHeader)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ReadError::UnsupportedFraming)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Err(ReadError::BodyTooLarge)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(ReadError::BadContentLength)
        ));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
        assert!(matches!(parse(long.as_bytes()), Err(ReadError::UriTooLong)));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Err(ReadError::HeadersTooLarge)));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"),
            Err(ReadError::Io(_))
        ));
    }
}
