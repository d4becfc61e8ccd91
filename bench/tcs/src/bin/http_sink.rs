//! The endpoint of the `http` worker row of bench/run.sh: an HTTP/1.1 server on 127.0.0.1
//! that answers every request `200` with a small JSON body, keep-alive, on one thread (a
//! current-thread tokio runtime), so the row measures the worker, not the service.
//!
//! Prints `{"port": P}` once listening; when its stdin is closed, prints
//! `{"requests": N}` and exits.
//! Usage: http_sink [PORT]   (0 or nothing: a free port)
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = "{\"ok\":true}";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The Content-Length of a request head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                return v.trim().parse().unwrap_or(0);
            }
        }
    }
    0
}

async fn serve(mut s: tokio::net::TcpStream, count: Arc<AtomicU64>) {
    let _ = s.set_nodelay(true);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // One request: its head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let total = head_end + content_length(&buf[..head_end]);
        while buf.len() < total {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..total);
        count.fetch_add(1, Ordering::Relaxed);
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn main() {
    let port: u16 = std::env::args().nth(1).map_or(0, |p| p.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    println!("{{\"port\": {}}}", listener.local_addr().unwrap().port());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let c = count.clone();
    rt.spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, c.clone()));
            }
        }
    });
    // The runtime runs its tasks while this thread blocks on it.
    rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        })
        .await
        .unwrap();
    });
    println!("{{\"requests\": {}}}", count.load(Ordering::Relaxed));
}
