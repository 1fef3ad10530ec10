//! The per-session HTTP agent (ureq 3) and one request/response exchange.
//!
//! One [`Http`] per session: its own ureq agent, hence its own connection
//! pool, so a connection that NTLM authenticated for one user is never
//! reused for another. The agent's connections come from the instance's
//! shared transport (`transport.rs`: one TLS context with verification on
//! and roots from the system or the configured CA file, TLS session
//! resumption, no resolver thread); no proxy from the environment; no
//! redirects followed (a redirect is reported to the caller, who treats it
//! as a protocol error); status codes are returned, not turned into errors;
//! and every body is read to its end, within a size bound, so the
//! connection returns to the pool. That last point is what keeps the three
//! NTLM legs on one connection.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::Agent;

use super::transport::{CwaConnector, HeldWait, NameResolver, TlsFailure};
use super::ClientConfig;

/// Each connection's input and output buffer (see [`Http::new`]).
pub const CONNECTION_BUFFER: usize = 16 * 1024;

/// The request and response header carrying the CWA ticket.
pub(crate) const TICKET_HEADER: &str = "CWA-Ticket";

/// A response, fully read.
#[derive(Debug, Clone)]
pub(crate) struct HttpReply {
    pub status: u16,
    /// `CWA-Ticket`, when the response carries one.
    pub ticket: Option<String>,
    /// Every `WWW-Authenticate` value.
    pub www_authenticate: Vec<String>,
    /// `Location`, for redirects.
    pub location: Option<String>,
    pub body: Vec<u8>,
    /// When the response head was read: the order in which responses
    /// arrived, whichever thread reads its body last.
    pub arrived: Instant,
}

impl HttpReply {
    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status)
    }

    /// The body as text for logs: bounded and on one line.
    pub fn body_for_log(&self) -> String {
        let n = self.body.len().min(300);
        String::from_utf8_lossy(&self.body[..n])
            .replace(['\r', '\n'], " ")
            .to_string()
    }
}

/// Why an exchange produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpFailure {
    /// TLS handshake or certificate verification.
    Tls(String),
    /// No connection could be made (refused, unreachable, name unknown).
    Connect(String),
    /// The connection broke during the exchange (reset, closed early).
    Dropped(String),
    /// A phase timeout expired.
    Timeout(String),
    /// The response (head or body) exceeded its bound.
    TooLarge(String),
    /// The peer did not speak HTTP as expected.
    Protocol(String),
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpFailure::Tls(why) => write!(f, "TLS: {why}"),
            HttpFailure::Connect(why) => write!(f, "connect: {why}"),
            HttpFailure::Dropped(why) => write!(f, "connection dropped: {why}"),
            HttpFailure::Timeout(why) => write!(f, "timeout: {why}"),
            HttpFailure::TooLarge(why) => write!(f, "response too large: {why}"),
            HttpFailure::Protocol(why) => write!(f, "HTTP: {why}"),
        }
    }
}

#[inline(never)]
fn classify(e: ureq::Error) -> HttpFailure {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Timeout(t) => HttpFailure::Timeout(t.to_string()),
        ureq::Error::NativeTls(e) => HttpFailure::Tls(e.to_string()),
        ureq::Error::Tls(why) => HttpFailure::Tls(why.to_string()),
        ureq::Error::HostNotFound => HttpFailure::Connect("host not found".into()),
        ureq::Error::ConnectionFailed => HttpFailure::Connect("connection failed".into()),
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable => {
                HttpFailure::Connect(io.to_string())
            }
            ErrorKind::TimedOut | ErrorKind::WouldBlock => HttpFailure::Timeout(io.to_string()),
            _ => HttpFailure::Dropped(io.to_string()),
        },
        ureq::Error::BodyExceedsLimit(n) => HttpFailure::TooLarge(format!("body over {n} bytes")),
        ureq::Error::LargeResponseHeader(n, limit) => {
            HttpFailure::TooLarge(format!("response head of {n} bytes (limit {limit})"))
        }
        ureq::Error::BodyStalled => HttpFailure::Timeout("response body stalled".into()),
        ureq::Error::Other(e) if e.is::<TlsFailure>() => HttpFailure::Tls(e.to_string()),
        other => HttpFailure::Protocol(other.to_string()),
    }
}

/// A session's HTTP client.
pub(crate) struct Http {
    agent: Agent,
    /// `scheme://host[:port][/prefix]`, without a trailing slash.
    base: String,
    max_body: usize,
    /// Receive timeout of a POST's response (the agent's own is the held
    /// event GET's).
    recv_timeout: Duration,
    /// While signing in: no exchange may end after this
    /// ([`ClientConfig::sign_in_deadline`]).
    pub(crate) deadline: Option<Instant>,
}

impl Http {
    /// Builds the agent for one session. The error is a configuration
    /// problem (URL scheme, CA file).
    pub fn new(config: &ClientConfig) -> Result<Http, String> {
        let base = config.base_url.trim().trim_end_matches('/').to_string();
        let lower = base.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(format!(
                "CWA URL {base:?} must start with https:// or http://"
            ));
        }
        if !base
            .split("://")
            .nth(1)
            .is_some_and(|rest| !rest.is_empty())
        {
            return Err(format!("CWA URL {base:?} has no host"));
        }
        let context = config
            .transport
            .context(config.ca_file.as_deref(), lower.starts_with("https://"))?;
        let agent_config = Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("collabd/", env!("CARGO_PKG_VERSION")))
            // One GET and one POST at a time: never more than two
            // connections per session.
            .max_idle_connections(2)
            .max_idle_connections_per_host(2)
            // ureq's default buffers are 128 KiB each way per connection,
            // zero-filled when first used, so resident: 256 KiB of every
            // session's footprint. CWA's headers are a few hundred bytes
            // and bodies are read in chunks, so 16 KiB each is ample
            // (measured: about 200 KiB less resident per session). They
            // exist only while a request or response is in flight: the
            // transport gives them back when the connection idles.
            .input_buffer_size(CONNECTION_BUFFER)
            .output_buffer_size(CONNECTION_BUFFER)
            // A response header must fit the input buffer; refuse a larger
            // one by name rather than as a stalled read.
            .max_response_header_size(CONNECTION_BUFFER / 2)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_send_request(Some(config.send_timeout))
            .timeout_send_body(Some(config.send_timeout))
            // The agent's own receive timeout is the held event GET's, so
            // that request carries no configuration of its own for the
            // hours it waits (a copy of the whole configuration per held
            // request); every POST sets the ordinary one (`post`).
            .timeout_recv_response(Some(config.recv_timeout + config.poll_hold_margin))
            .timeout_recv_body(Some(config.recv_timeout))
            .build();
        // The TLS context is the instance's; the pool is this session's.
        let agent = Agent::with_parts(
            agent_config,
            CwaConnector::new(Arc::clone(&context)),
            NameResolver::new(context),
        );
        Ok(Http {
            agent,
            base,
            max_body: config.max_body,
            recv_timeout: config.recv_timeout,
            deadline: config.sign_in_deadline,
        })
    }

    /// POSTs `body` as `text/xml` to `path`, with the ticket (if any) and
    /// extra headers, and reads the whole response.
    pub fn post(
        &self,
        path: &str,
        ticket: Option<&str>,
        extra_headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpReply, HttpFailure> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "text/xml; charset=utf-8");
        if let Some(t) = ticket {
            request = request.header(TICKET_HEADER, t);
        }
        for (k, v) in extra_headers {
            request = request.header(*k, *v);
        }
        let mut config = request
            .config()
            .timeout_recv_response(Some(self.recv_timeout));
        if let Some(by) = self.deadline {
            let left = by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HttpFailure::Timeout("sign-in deadline passed".into()));
            }
            config = config.timeout_global(Some(left));
        }
        let response = config.build().send(body).map_err(classify)?;
        self.read(response)
    }

    /// GETs `path_and_query` with the long-poll receive timeout.
    ///
    /// The session's event thread waits in here for as long as CWA holds
    /// the GET, so the frames above the wait are kept small: the request
    /// is built in a function of its own and run through `Agent::run`
    /// (ureq's request builder is two frames of about 1.5 KiB), and the
    /// transport gives back the stack below the wait
    /// ([`HeldWait`](super::transport::HeldWait)).
    pub fn get_long_poll(
        &self,
        path_and_query: &str,
        ticket: Option<&str>,
    ) -> Result<HttpReply, HttpFailure> {
        let request = self.long_poll_request(path_and_query, ticket)?;
        let response = {
            let _held = HeldWait::begin();
            self.agent.run(request).map_err(classify)?
        };
        self.read(response)
    }

    #[inline(never)]
    fn long_poll_request(
        &self,
        path_and_query: &str,
        ticket: Option<&str>,
    ) -> Result<ureq::http::Request<()>, HttpFailure> {
        let mut request = ureq::http::Request::get(format!("{}{path_and_query}", self.base));
        if let Some(t) = ticket {
            request = request.header(TICKET_HEADER, t);
        }
        request
            .body(())
            .map_err(|e| HttpFailure::Protocol(format!("event GET: {e}")))
    }

    #[inline(never)]
    fn read(
        &self,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<HttpReply, HttpFailure> {
        let arrived = Instant::now();
        let status = response.status().as_u16();
        let headers = response.headers();
        let text = |v: &ureq::http::HeaderValue| v.to_str().ok().map(|s| s.trim().to_string());
        let ticket = headers
            .get(TICKET_HEADER)
            .and_then(text)
            .filter(|t| !t.is_empty());
        let www_authenticate = headers
            .get_all("WWW-Authenticate")
            .iter()
            .filter_map(text)
            .collect();
        let location = headers.get("Location").and_then(text);
        // Read to the end (bounded) so the connection goes back to the pool.
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_body as u64)
            .read_to_vec()
            .map_err(classify)?;
        Ok(HttpReply {
            status,
            ticket,
            www_authenticate,
            location,
            body,
            arrived,
        })
    }
}
