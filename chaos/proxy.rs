//! A TCP proxy between one beat and Redis that plays a flaky network: it passes bytes, stalls
//! them (connections stay open, nothing moves: a partition the kernel does not report), or
//! drops every connection and refuses new ones for a while.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes.
    Pass,
    /// Hold bytes: connections stay open, nothing is forwarded until `Pass`.
    Stall,
    /// Close every connection; accept and close new ones.
    Drop,
}

/// A running proxy; dropping the runtime ends it.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Switches the mode of every connection at once.
    pub mode: watch::Sender<Mode>,
}

/// Starts a proxy on a free loopback port forwarding to `upstream`.
pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(Mode::Pass);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if *rx.borrow() == Mode::Drop {
                continue; // dropped: closed at once
            }
            let rx = rx.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
            });
        }
    });
    Ok(Proxy { addr, mode: tx })
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Wait out a stall; end on a drop.
        loop {
            let m = *mode.borrow_and_update();
            match m {
                Mode::Pass => break,
                Mode::Drop => return,
                Mode::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            c = mode.changed() => { if c.is_err() { return } continue }
        };
        // Bytes read just before a stall are held, not lost: wait, then deliver them late.
        loop {
            let m = *mode.borrow_and_update();
            match m {
                Mode::Pass => break,
                Mode::Drop => return,
                Mode::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
