//! Liveness that means something, in-process: the whole beat daemon (`serve_beat`) on
//! in-memory ports, a real HTTP listener and a real notify socket. While the beat loop turns,
//! `/healthz` answers 200 and the watchdog pings; once a store call never returns (the loop
//! wedged), `/healthz` turns 503 naming the loop and the pings stop.

use beatd::app::daemon::{serve_beat, BeatPorts, Daemon};
use beatd::beat::{BeatOptions, Emission};
use beatd::emit::MemoryEmitter;
use beatd::leader::{MemoryLeader, Poll};
use beatd::ops::notify::Watchdog;
use beatd::shutdown::Signals;
use beatd::state::MemoryState;
use beatd::store::Fault;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `GET path` on `addr`: (status, body), or `None` when nothing answers.
fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

/// Waits (up to 20 s) for `/healthz` to answer `code`; returns the body.
fn wait_health(addr: std::net::SocketAddr, code: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((c, body)) = get(addr, "/healthz") {
            if c == code {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "/healthz never answered {code}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Watchdog pings received within `window`.
fn pings(sock: &UnixDatagram, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut n = 0;
    let mut buf = [0u8; 64];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(len) if &buf[..len] == b"WATCHDOG=1" => n += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    n
}

#[test]
fn a_wedged_beat_loop_turns_healthz_503_and_stops_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fault = Fault::default();
    // A short lease and short sleeps: the loop turns every 100 ms, renews every 200 ms, and
    // counts as stalled after 3 x 100 ms without a turn.
    let leader = Arc::new(MemoryLeader::new(Duration::from_millis(600)).with_fault(fault.clone()));
    let state = MemoryState::default();
    let ports = BeatPorts {
        leader: leader.clone(),
        handover: Arc::new(Poll),
        emission: Emission::Direct(Arc::new(MemoryEmitter::new(leader, state.clone()))),
        state: Arc::new(state),
        controls: Arc::new(beatd::control::LocalControls::in_memory()),
        results: None,
    };
    let options = BeatOptions {
        acquire_interval: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        max_sleep: Duration::from_millis(100),
        ..BeatOptions::default()
    };
    let signals = Signals::default();
    let d = Daemon::with(
        Duration::from_millis(500),
        signals.clone(),
        Watchdog::to_socket(sock_path, Duration::from_millis(50)),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let daemon = rt.spawn(serve_beat(
        d,
        ports,
        Vec::new(),
        beatd::app::daemon::Sources::default(),
        options,
        None,
        Some(listener),
    ));

    assert_eq!(wait_health(addr, 200), "ok\n");
    assert!(
        pings(&sock, Duration::from_millis(500)) >= 3,
        "no watchdog pings"
    );

    // Every lock call from now on never returns: the next renewal wedges the loop.
    fault.hang();
    let body = wait_health(addr, 503);
    assert!(body.contains("beat loop stalled"), "{body}");
    // Pings sent before the stall was seen may still be queued: drain, then none come.
    pings(&sock, Duration::from_millis(200));
    assert_eq!(
        pings(&sock, Duration::from_millis(600)),
        0,
        "pinged while stalled"
    );
    assert_eq!(get(addr, "/healthz").map(|r| r.0), Some(503));

    signals.graceful.cancel();
    // The wedged loop cannot finish; the daemon still exits within its grace.
    let code = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), daemon).await })
        .expect("daemon exits within its grace")
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
}
