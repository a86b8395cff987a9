//! A raw HTTP/1.1 client: one request per connection (`connection: close`), bytes in, bytes
//! out, so tests control exactly what goes on the wire.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, as text (lossy).
    pub fn header(&self, name: &str) -> Option<String> {
        crate::host::first_header(&self.headers, name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// All values of a header.
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `127.0.0.1:port`. `headers` go out as given (add `host` yourself).
pub fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Result<Response> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in headers {
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == "POST" {
        raw.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    raw.extend_from_slice(b"connection: close\r\n\r\n");
    raw.extend_from_slice(body);
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to port {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&raw)?;
    // Read until the response is complete rather than until EOF: Envoy keeps a closing
    // connection open for its delayed-close timeout (1 s).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(done) = complete(&buf) {
            return parse(buf.get(..done).unwrap_or_default());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return parse(&buf);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// The length of a complete response at the start of `buf`, if it is all there.
fn complete(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(buf.get(..end)?).to_ascii_lowercase();
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        let total = end + len.trim().parse::<usize>().ok()?;
        return (buf.len() >= total).then_some(total);
    }
    if head.contains("transfer-encoding: chunked") {
        let body = buf.get(end..)?;
        let at = body.windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(end + at + 5);
    }
    None
}

fn parse(buf: &[u8]) -> Result<Response> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = buf.get(..end).context("head")?;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = String::from_utf8_lossy(lines.next().context("no status line")?).into_owned();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let mut headers = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            bail!("bad header line")
        };
        let name =
            String::from_utf8_lossy(line.get(..colon).unwrap_or_default()).to_ascii_lowercase();
        let value = line
            .get(colon + 1..)
            .unwrap_or_default()
            .trim_ascii()
            .to_vec();
        headers.push((name, value));
    }
    let mut body = buf.get(end + 4..).unwrap_or_default().to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(data.get(..eol).unwrap_or_default())?.trim(),
            16,
        )?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(eol + 2..eol + 2 + size).context("chunk")?);
        data = data.get(eol + 4 + size..).unwrap_or_default();
    }
}
