//! Just enough HTTP to ask a service's `/readyz`: one GET over plain TCP. The endpoints
//! are the pipeline's own (`service::http`, plain HTTP on the plant network), so a full
//! HTTP client with TLS would be a large dependency for a one-line request.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response read; `/readyz` answers a few lines.
const MAX_RESPONSE: u64 = 64 * 1024;

/// `http://host:port[/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for the root).
    pub base: String,
}

impl HttpUrl {
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest = value
            .strip_prefix("http://")
            .ok_or_else(|| format!("{value:?}: only http:// URLs are supported"))?;
        let (authority, base) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let port_number = |port: &str| {
            port.parse()
                .map_err(|_| format!("{value:?}: {port:?} is not a port number"))
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{value:?}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port_number(port)?),
                None if after.is_empty() => (host, 80),
                None => return Err(format!("{value:?}: unexpected {after:?} after the host")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, port_number(port)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(format!("{value:?} has no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            base: base.to_owned(),
        })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.base)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.base)
        }
    }
}

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GET `{url}{path}`, all of it within `timeout`.
pub async fn get(url: &HttpUrl, path: &str, timeout: Duration) -> Result<Response> {
    tokio::time::timeout(timeout, exchange(url, path))
        .await
        .map_err(|_| anyhow!("no answer within {}s", timeout.as_secs()))?
}

async fn exchange(url: &HttpUrl, path: &str) -> Result<Response> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .context("cannot connect")?;
    // HTTP/1.0: the server closes the connection after the body and sends no chunked
    // encoding, so reading to the end gives the whole body as it is.
    let request = format!(
        "GET {}{path} HTTP/1.0\r\nHost: {}:{}\r\nConnection: close\r\n\r\n",
        url.base, url.host, url.port
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .await
        .context("reading the response")?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP response (no end of headers)"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("not an HTTP response: {status_line:?}");
    };
    if !version.starts_with("HTTP/") {
        bail!("not an HTTP response: {status_line:?}");
    }
    let status = code
        .parse()
        .map_err(|_| anyhow!("not an HTTP status: {status_line:?}"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:9101"),
            Ok(HttpUrl {
                host: "127.0.0.1".into(),
                port: 9101,
                base: String::new()
            })
        );
        let with_base = HttpUrl::parse("http://bridge:9101/ops/").unwrap();
        assert_eq!(with_base.base, "/ops");
        assert_eq!(with_base.to_string(), "http://bridge:9101/ops");
        assert_eq!(HttpUrl::parse("http://bridge").unwrap().port, 80);
        let v6 = HttpUrl::parse("http://[::1]:9102").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9102));
        assert!(HttpUrl::parse("https://bridge:9101").is_err());
        assert!(HttpUrl::parse("http://:9101").is_err());
        assert!(HttpUrl::parse("http://bridge:port").is_err());
    }

    #[test]
    fn responses() {
        let ok = parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nmqtt connected\nkafka connected\n",
        )
        .unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, "mqtt connected\nkafka connected\n");
        let down = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\nkafka down").unwrap();
        assert_eq!(down.status, 503);
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_response(b"hello\r\n\r\n").is_err());
    }
}
