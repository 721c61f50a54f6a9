//! The smallest HTTP/1.1 server that answers a Prometheus scrape: `GET /metrics` gets the
//! registry's text, any other path 404, any other method 405, anything malformed 400.
//!
//! It is reachable by whoever can reach its address, so it must not be a way to exhaust
//! the node: a request head is read up to [`HttpLimits::max_request`] bytes (431 beyond),
//! a connection has [`HttpLimits::timeout`] for its whole exchange (a client trickling one
//! byte a second is cut there), at most [`HttpLimits::max_connections`] are served at
//! once (more are closed unanswered), and every response closes its connection, so no
//! connection is held between scrapes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

/// What the metrics endpoint allows one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// The largest request head read (request line and headers), in bytes. 8 KiB by
    /// default: a scrape sends a few hundred.
    pub max_request: usize,
    /// How long one connection may take, from accept to the response's last byte. 5 s by
    /// default.
    pub timeout: Duration,
    /// Connections served at once; further ones are closed at once. 16 by default.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_request: 8 * 1024, timeout: Duration::from_secs(5), max_connections: 16 }
    }
}

/// A response, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The body's content type.
    pub(crate) content_type: &'static str,
    /// The body.
    pub(crate) body: String,
}

impl Response {
    fn plain(status: u16, body: &str) -> Self {
        Response { status, content_type: "text/plain; charset=utf-8", body: format!("{body}\n") }
    }

    /// The whole response as sent: status line, headers, body.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let allow = if self.status == 405 { "Allow: GET\r\n" } else { "" };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
             Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// The response to the request head `head` (everything before the blank line): `render`
/// produces the metrics' text and its content type, called only for a valid scrape.
pub(crate) fn respond(head: &[u8], render: impl FnOnce() -> (String, &'static str)) -> Response {
    let Ok(head) = std::str::from_utf8(head) else {
        return Response::plain(400, "request is not UTF-8");
    };
    let line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::plain(400, "malformed request line");
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Response::plain(400, "only HTTP/1.0 and HTTP/1.1 are spoken here");
    }
    if !target.starts_with('/') {
        return Response::plain(400, "the request target must be a path");
    }
    if method != "GET" {
        return Response::plain(405, "only GET is allowed");
    }
    // A query string (Prometheus may add one) does not change what is served.
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Response::plain(404, "not found: the metrics are at /metrics");
    }
    let (body, content_type) = render();
    Response { status: 200, content_type, body }
}

/// Where the head ends (the index just past its blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads one request head off `stream` and answers it; `None` when the client went away
/// before sending a whole head.
async fn exchange(
    stream: &mut TcpStream,
    limits: &HttpLimits,
    render: &(dyn Fn() -> (String, &'static str) + Send + Sync),
) -> std::io::Result<Option<u16>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            break respond(&buf[..end], render);
        }
        if buf.len() >= limits.max_request {
            break Response::plain(
                431,
                &format!("the request head exceeds {} bytes", limits.max_request),
            );
        }
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await?;
    Ok(Some(response.status))
}

/// Serves `listener` until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    render: Arc<dyn Fn() -> (String, &'static str) + Send + Sync>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics endpoint: too many connections; closed unanswered");
            continue;
        };
        let (limits, render) = (limits.clone(), render.clone());
        tokio::spawn(async move {
            let result =
                tokio::time::timeout(limits.timeout, exchange(&mut stream, &limits, &*render))
                    .await;
            match result {
                Ok(Ok(status)) => debug!(%peer, ?status, "metrics endpoint: answered"),
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics endpoint: connection failed"),
                Err(_) => debug!(%peer, "metrics endpoint: request timed out; closed"),
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (String, &'static str) {
        ("meridian_up 1\n".into(), "text/plain; version=0.0.4")
    }

    fn status(head: &str) -> u16 {
        respond(head.as_bytes(), metrics).status
    }

    #[test]
    fn a_scrape_gets_the_metrics_and_everything_else_is_refused() {
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", metrics);
        assert_eq!((ok.status, ok.body.as_str()), (200, "meridian_up 1\n"));
        assert_eq!(ok.content_type, "text/plain; version=0.0.4");
        assert_eq!(status("GET /metrics?name[]=x HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("GET /metricsX HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("GET /metrics HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status("GET /metrics\r\n\r\n"), 400);
        assert_eq!(status("GET  /metrics HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET http://x/metrics HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(respond(b"GET /\xff HTTP/1.1\r\n\r\n", metrics).status, 400);
        // The registry is not rendered for a refused request.
        let refused = respond(b"GET /other HTTP/1.1\r\n\r\n", || unreachable!("rendered"));
        assert_eq!(refused.status, 404);
        let text = String::from_utf8(Response::plain(405, "no").to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{text}");
        assert!(text.contains("Allow: GET\r\n") && text.contains("Content-Length: 3\r\n"));
    }

    /// A server on a free loopback port with `limits`.
    async fn server(limits: HttpLimits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, tokio::spawn(serve(listener, limits, Arc::new(metrics))))
    }

    /// Sends `request` and reads until the server closes: what it answered.
    async fn ask(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before taking all of an oversized request.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn over_a_socket_bad_requests_are_refused_and_slow_ones_cut() {
        let limits = HttpLimits {
            max_request: 512,
            timeout: Duration::from_millis(300),
            max_connections: 2,
        };
        let (addr, task) = server(limits).await;
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("meridian_up 1\n"), "{ok}");
        let missing = ask(addr, b"GET /admin HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        // A head that never ends is cut at the limit, not buffered.
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(4096));
        let answer = ask(addr, huge.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // A client that sends half a head and waits is closed at the timeout, unanswered.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metr").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the server kept a stalled connection open");
        assert!(rest.is_empty(), "a stalled request got an answer: {rest:?}");
        // Connections over the cap are closed unanswered while the others stall.
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let over = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(over.is_empty(), "a connection over the cap was served: {over}");
        // Once the stalled ones time out, scrapes are served again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let again = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 "), "{again}");
        task.abort();
    }
}
