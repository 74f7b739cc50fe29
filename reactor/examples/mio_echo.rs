//! The naive floor for the benchmarks: a minimal single-threaded mio echo server. Measure
//! against it; do not copy it.
//!
//! ```text
//! cargo run --release -p ruyi-reactor --example mio_echo -- 127.0.0.1:7002 [seconds]
//! ```
//! One thread, one `Poll`, a `Slab` of streams, read into one buffer and write straight back
//! (buffering only what the socket refuses). It is the least work an echo over mio can do,
//! to show what the engine's bookkeeping costs per core, and it gets there by breaking the
//! rules in `RULES.md`:
//! - it treats every accept error as `WouldBlock` (a full descriptor table ends the accept
//!   pass silently instead of backing off);
//! - it writes once per event instead of until `WouldBlock` or a budget, and has no
//!   fairness budget at all (R3, R4): one flooding client holds the thread;
//! - it buffers what the socket refuses without a limit (R5): a client that never reads
//!   grows the server's memory for ever;
//! - it has no timers, no cross-thread path, no stale-id checks and no orderly stop.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);

struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7002".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let deadline = args
        .next()
        .and_then(|s| s.parse().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("mio echo listening on {}", listener.local_addr()?);
    let mut clients: Slab<Client> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 << 10];
    while deadline.is_none_or(|d| Instant::now() < d) {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let entry = clients.vacant_entry();
                    let token = Token(entry.key());
                    poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    entry.insert(Client {
                        stream,
                        pending: Vec::new(),
                    });
                }
                continue;
            }
            let key = event.token().0;
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            let mut closed = false;
            if event.is_writable() && !client.pending.is_empty() {
                match client.stream.write(&client.pending) {
                    Ok(n) => {
                        client.pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => closed = true,
                }
            }
            if event.is_readable() {
                loop {
                    match client.stream.read(&mut buf) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => {
                            if !client.pending.is_empty() {
                                client.pending.extend_from_slice(&buf[..n]);
                                continue;
                            }
                            match client.stream.write(&buf[..n]) {
                                Ok(w) => client.pending.extend_from_slice(&buf[w..n]),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    client.pending.extend_from_slice(&buf[..n])
                                }
                                Err(_) => {
                                    closed = true;
                                    break;
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed {
                let mut c = clients.remove(key);
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
    Ok(())
}
