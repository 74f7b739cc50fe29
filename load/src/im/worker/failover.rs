//! `--failover`: a connection that lost its server logs in on the next one and sends its
//! unanswered SENDs again (what it then missed is read back after the drain:
//! `im/recover.rs`).

use super::*;

/// How long a connection may try the servers in turn after losing its own.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// `c` lost its server (`--failover`): it logs in on the next one that takes the
/// connection, trying each in turn for [`FAILOVER_LIMIT`]; its SENDs in flight go again
/// once it is in ([`resend`]). The connects block this worker meanwhile (a refused one on
/// loopback returns at once; a silent one after 5 s); a server that refused within the
/// last [`REFUSED_FOR`] is skipped (`refused`, per worker), and the worker sleeps only when
/// every server refused.
pub(super) fn fail_over(
    c: &mut Conn,
    poll: &Poll,
    args: &ImArgs,
    token: Token,
    tls: Option<&Arc<rustls::ClientConfig>>,
    refused: &mut HashMap<usize, Instant>,
) -> io::Result<()> {
    let _ = poll.registry().deregister(c.stream.socket());
    c.lost_on.push(c.server);
    let n = args.servers.len().max(1);
    let deadline = Instant::now() + FAILOVER_LIMIT;
    loop {
        for _ in 0..n {
            c.server = (c.server + 1) % n;
            if refused
                .get(&c.server)
                .is_some_and(|at| at.elapsed() < REFUSED_FOR)
            {
                continue;
            }
            match dial(args, poll, c.server, c.global, token, tls) {
                Ok(stream) => {
                    c.stream = stream;
                    if login(c, args).is_ok() {
                        c.reconnects += 1;
                        return Ok(());
                    }
                }
                Err(_) => {
                    refused.insert(c.server, Instant::now());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{}: no server took the connection within {FAILOVER_LIMIT:?}",
                c.plan.uid
            )));
        }
        refused.clear(); // every one refused: try them all again after a pause
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server that refused a connection is not tried again for this long.
const REFUSED_FOR: Duration = Duration::from_secs(2);

/// After a failover's CONNACK: the SENDs that had no SENDACK go again under their own
/// numbers, so a server that stored one answers from its dedupe window (same id and seq)
/// instead of storing it twice.
pub(super) fn resend(c: &mut Conn) -> io::Result<()> {
    let Some((target, channel_type)) = c.plan.target.clone() else {
        return Ok(());
    };
    let again: Vec<(u32, Bytes)> = c
        .in_flight
        .iter()
        .map(|f| (f.client_seq, f.plain.clone()))
        .collect();
    for (client_seq, plain) in again {
        send_packet(c, &target, channel_type, client_seq, &plain)?;
    }
    Ok(())
}
