//! A minimal blocking HTTP/1.1 GET over a plain TCP stream — just enough for musterd's
//! `/health`. Shared by the `muster-health` probe (which must stay tiny and std-only inside the
//! scratch image) and by the checker's view of the cluster.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GETs `http://{addr}{path}`. `addr` is `host:port`; the host is resolved with the system
/// resolver (in the scratch image: static glibc reading /etc/hosts and /etc/resolv.conf).
/// The whole exchange (resolve excluded) is bounded by `timeout`.
///
/// # Errors
/// Resolution, connection, timeout, or a response that is not HTTP.
pub fn get(addr: &str, path: &str, timeout: Duration) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
    for sa in addr.to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        match TcpStream::connect_timeout(&sa, left) {
            Ok(s) => return exchange(s, addr, path, deadline),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

fn exchange(mut s: TcpStream, host: &str, path: &str, deadline: Instant) -> io::Result<Response> {
    let left = |d: Instant| {
        let l = d.saturating_duration_since(Instant::now());
        if l.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
        } else {
            Ok(Some(l))
        }
    };
    s.set_write_timeout(left(deadline)?)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: muster-chaos\r\n\r\n"
    )?;
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        s.set_read_timeout(left(deadline)?)?;
        match s.read(&mut buf)? {
            0 => break,
            n => raw.extend_from_slice(&buf[..n]),
        }
        if raw.len() > 1 << 20 {
            return Err(bad("response larger than 1 MiB"));
        }
    }
    parse(&raw)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Parses a `Connection: close` response (no chunked bodies expected from musterd's small JSON,
/// but a chunked one is decoded anyway).
fn parse(raw: &[u8]) -> io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("parse");
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
            .expect("parse");
        assert_eq!((r.status, r.body.as_str()), (503, "{}"));
        assert!(parse(b"garbage").is_err());
    }
}
