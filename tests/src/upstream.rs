//! A scripted HTTP/1.1 upstream on loopback, shared by real Envoy and the wasmtime host so both
//! talk to the same server. The path picks the behaviour:
//!
//! - `/ok` → `200`, `x-up: ok`, body `hello`;
//! - `/slow` → the same after 1.5 s (longer than the trace scenarios' call timeouts);
//! - `/close` → reads the request and closes the connection without answering;
//! - `/partial` → headers announcing 100 bytes, 5 bytes of body, then closes;
//! - anything else → `200`, `x-origin: yes`, body `origin\n` (the main route's origin).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;

/// A running upstream; stops accepting when dropped.
pub struct Upstream {
    /// Its loopback address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Starts the server on a free loopback port.
    pub fn start() -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || serve(conn));
                }
            }
        });
        Ok(Upstream { addr, stop })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes or a script closes.
fn serve(conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer: &[u8] = match path.as_str() {
            "/ok" => b"HTTP/1.1 200 OK\r\nx-up: ok\r\ncontent-length: 5\r\n\r\nhello",
            "/slow" => {
                std::thread::sleep(Duration::from_millis(1500));
                b"HTTP/1.1 200 OK\r\nx-up: slow\r\ncontent-length: 5\r\n\r\nhello"
            }
            "/close" => return,
            "/partial" => {
                let _ = writer
                    .write_all(b"HTTP/1.1 200 OK\r\nx-up: partial\r\ncontent-length: 100\r\n\r\nhello");
                let _ = writer.flush();
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
            _ => {
                b"HTTP/1.1 200 OK\r\nx-origin: yes\r\ncontent-type: text/plain\r\ncontent-length: 7\r\n\r\norigin\n"
            }
        };
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}
