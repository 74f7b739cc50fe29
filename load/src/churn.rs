//! `ruyi-load churn`: reconnect churn and the offline path, with every message accounted.
//!
//! Each of `--pairs` pairs has a sender that stays logged in and a churner that keeps
//! leaving and coming back. One cycle: the sender sends a batch while the churner is
//! online (it must arrive as RECVs, which the churner acknowledges); the churner drops its
//! connection without a word; the sender sends another batch at once (some may race the
//! close: the server must still put them in the offline queue); the churner fetches them
//! with `POST /message/sync`, acknowledges with `/message/syncack`, and logs in again.
//! Every message carries the sender's counter: each must be seen exactly once, online or
//! by sync. Runs for `--seconds` and stops by itself.

use crate::im::http_post;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use clap::Args;
use ruyi_proto::crypto::{public_key_b64, random_secret};
use ruyi_proto::{
    decode_packet, ConnectPacket, Flags, Packet, RecvackPacket, SendPacket, SessionCipher,
    MAX_BODY_BYTES,
};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct ChurnArgs {
    /// Binary protocol address.
    #[arg(long, default_value = "127.0.0.1:5100")]
    pub tcp: SocketAddr,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub http: SocketAddr,
    /// Sender/churner pairs, one thread each.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages per batch (one online, one offline per cycle).
    #[arg(long, default_value_t = 10)]
    pub batch: u64,
    /// Pause between cycles, milliseconds (keeps each sender under the server's default
    /// 200 SENDs per second).
    #[arg(long, default_value_t = 150)]
    pub pause_ms: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Encrypt, as the official SDKs do.
    #[arg(long)]
    pub encrypt: bool,
    /// uid prefix.
    #[arg(long, default_value = "churn")]
    pub prefix: String,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    pairs: usize,
    cycles: u64,
    logins: u64,
    online: u64,
    synced: u64,
    lost: u64,
    duplicated: u64,
}

/// The meaning of each figure of [`Report`] (`meta.rs`).
const UNITS: &[(&str, &str)] = &[
    ("pairs", "sender/receiver pairs"),
    ("cycles", "receiver disconnect/reconnect cycles, all pairs"),
    ("logins", "receiver logins, all pairs"),
    ("online", "messages the receivers got as live RECVs"),
    ("synced", "messages the receivers got from /message/sync"),
    (
        "lost",
        "acknowledged messages never received, after the final sync",
    ),
    ("duplicated", "messages received more than once"),
];

pub fn run(args: &ChurnArgs) -> io::Result<()> {
    let meta = crate::meta::collect("churn", None, args, UNITS);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let threads: Vec<_> = (0..args.pairs)
        .map(|i| {
            let args = args.clone();
            std::thread::spawn(move || pair(&args, i, deadline))
        })
        .collect();
    let mut total = Report {
        pairs: args.pairs,
        ..Report::default()
    };
    for t in threads {
        let r = t
            .join()
            .map_err(|_| io::Error::other("a pair panicked"))??;
        total.cycles += r.cycles;
        total.logins += r.logins;
        total.online += r.online;
        total.synced += r.synced;
        total.lost += r.lost;
        total.duplicated += r.duplicated;
    }
    println!(
        "churn pairs={} cycles={} logins={} online={} synced={} lost={} dup={}",
        total.pairs,
        total.cycles,
        total.logins,
        total.online,
        total.synced,
        total.lost,
        total.duplicated
    );
    crate::meta::write_json(args.json.as_deref(), &meta, &total)?;
    if total.lost + total.duplicated > 0 {
        return Err(io::Error::other("messages were lost or duplicated"));
    }
    Ok(())
}

fn pair(args: &ChurnArgs, i: usize, deadline: Instant) -> io::Result<Report> {
    let (s_uid, c_uid) = (
        format!("{}-s{i}", args.prefix),
        format!("{}-c{i}", args.prefix),
    );
    let mut r = Report::default();
    let mut sender = Client::login(args.tcp, &s_uid, args.encrypt)?;
    let mut counter = 0u64;
    // counter → times seen by the churner.
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut sync_cursor = 0u64;
    while Instant::now() < deadline {
        let mut churner = Client::login(args.tcp, &c_uid, args.encrypt)?;
        r.logins += 1;
        // Online: the batch arrives as RECVs.
        let online_from = counter + 1;
        counter = sender.send_batch(&c_uid, counter, args.batch)?;
        while (online_from..=counter).any(|c| !seen.contains_key(&c)) {
            let Some(p) = churner.read_packet(Duration::from_secs(10))? else {
                return Err(io::Error::other(format!(
                    "{c_uid}: an online message never came"
                )));
            };
            if let Packet::Recv(recv) = p {
                let plain = churner.open(&recv)?;
                churner.queue(&Packet::Recvack(RecvackPacket {
                    flags: Flags(0),
                    message_id: recv.message_id,
                    message_seq: recv.message_seq,
                }))?;
                count(&mut seen, &plain);
                r.online += 1;
            }
        }
        churner.flush()?;
        // Gone without a word; the next batch is sent at once.
        drop(churner);
        let offline_from = counter + 1;
        counter = sender.send_batch(&c_uid, counter, args.batch)?;
        // Offline: fetched by sync. A message that raced the close reaches the queue when
        // the server notices the close, so look a few times.
        let until = Instant::now() + Duration::from_secs(10);
        while (offline_from..=counter).any(|c| !seen.contains_key(&c)) && Instant::now() < until {
            let body = serde_json::json!({"uid": c_uid, "message_seq": sync_cursor, "limit": 1000});
            let answer = http_post(args.http, "/message/sync", &body.to_string())?;
            let list: Vec<serde_json::Value> =
                serde_json::from_str(&answer).map_err(io::Error::other)?;
            for m in &list {
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(m["payload"].as_str().unwrap_or(""))
                    .map_err(io::Error::other)?;
                count(&mut seen, &payload);
                r.synced += 1;
                sync_cursor = sync_cursor.max(m["message_seq"].as_u64().unwrap_or(0));
            }
            if !list.is_empty() {
                let ack = serde_json::json!({"uid": c_uid, "last_message_seq": sync_cursor});
                http_post(args.http, "/message/syncack", &ack.to_string())?;
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        r.cycles += 1;
        std::thread::sleep(Duration::from_millis(args.pause_ms));
    }
    let missing: Vec<u64> = (1..=counter).filter(|c| !seen.contains_key(c)).collect();
    if !missing.is_empty() {
        log::warn!("{c_uid}: never seen: {missing:?}");
    }
    r.lost = missing.len() as u64;
    r.duplicated = seen.values().map(|&n| u64::from(n.saturating_sub(1))).sum();
    Ok(r)
}

/// Counts the counter a payload carries (bytes 16..24, as `ruyi-load person` writes it).
fn count(seen: &mut HashMap<u64, u32>, payload: &[u8]) {
    if let Some(bytes) = payload.get(16..24) {
        let mut c = [0u8; 8];
        c.copy_from_slice(bytes);
        *seen.entry(u64::from_be_bytes(c)).or_insert(0) += 1;
    }
}

/// A blocking protocol client: one connection, optionally encrypted.
struct Client {
    stream: TcpStream,
    cipher: Option<SessionCipher>,
    input: Vec<u8>,
    output: BytesMut,
    uid: String,
    client_seq: u32,
}

impl Client {
    fn login(addr: SocketAddr, uid: &str, encrypt: bool) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let secret = random_secret().map_err(io::Error::other)?;
        let mut c = Client {
            stream,
            cipher: None,
            input: Vec::new(),
            output: BytesMut::new(),
            uid: uid.to_owned(),
            client_seq: 1,
        };
        c.queue(&Packet::Connect(ConnectPacket {
            version: 4,
            device_flag: 0,
            device_id: format!("{uid}-d"),
            uid: uid.into(),
            token: "churn".into(),
            client_timestamp: 0,
            client_key: if encrypt {
                public_key_b64(secret)
            } else {
                String::new()
            },
        }))?;
        c.flush()?;
        match c.read_packet(Duration::from_secs(10))? {
            Some(Packet::Connack(ack)) if ack.reason_code == 1 => {
                if encrypt {
                    c.cipher = Some(
                        SessionCipher::derive(secret, &ack.server_key, &ack.salt)
                            .map_err(io::Error::other)?,
                    );
                }
                Ok(c)
            }
            other => Err(io::Error::other(format!("{uid}: login failed: {other:?}"))),
        }
    }

    /// Sends counters `from + 1 ..= from + n` to `to` and waits for every SENDACK; returns
    /// the last counter.
    fn send_batch(&mut self, to: &str, from: u64, n: u64) -> io::Result<u64> {
        for counter in from + 1..=from + n {
            let mut plain = vec![b'x'; 32];
            plain[16..24].copy_from_slice(&counter.to_be_bytes());
            let client_msg_no = format!("{}-{counter}", self.uid);
            let (payload, msg_key) = match &self.cipher {
                Some(c) => {
                    let wire = c.encrypt_b64(&plain);
                    let key =
                        c.send_msg_key(self.client_seq, &client_msg_no, to, 1, wire.as_bytes());
                    (Bytes::from(wire.into_bytes()), key)
                }
                None => (Bytes::from(plain), String::new()),
            };
            self.queue(&Packet::Send(SendPacket {
                flags: Flags(Flags::RED_DOT),
                client_seq: self.client_seq,
                client_msg_no,
                channel_id: to.into(),
                channel_type: 1,
                msg_key,
                payload,
                ..Default::default()
            }))?;
            self.client_seq += 1;
        }
        self.flush()?;
        let mut acked = 0;
        while acked < n {
            match self.read_packet(Duration::from_secs(10))? {
                Some(Packet::Sendack(a)) if a.reason_code == 1 => acked += 1,
                Some(Packet::Sendack(a)) => {
                    return Err(io::Error::other(format!(
                        "{}: SENDACK reason {}",
                        self.uid, a.reason_code
                    )))
                }
                Some(_) => {}
                None => return Err(io::Error::other(format!("{}: no SENDACK", self.uid))),
            }
        }
        Ok(from + n)
    }

    fn open(&self, r: &ruyi_proto::RecvPacket) -> io::Result<Vec<u8>> {
        match &self.cipher {
            Some(c) => c.open_recv(r).map_err(io::Error::other),
            None => Ok(r.payload.to_vec()),
        }
    }

    fn queue(&mut self, p: &Packet) -> io::Result<()> {
        p.encode(4, &mut self.output).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.output)?;
        self.output.clear();
        Ok(())
    }

    /// The next packet, or `None` on timeout or close.
    fn read_packet(&mut self, timeout: Duration) -> io::Result<Option<Packet>> {
        let until = Instant::now() + timeout;
        loop {
            if let Some((p, used)) =
                decode_packet(&self.input, 4, MAX_BODY_BYTES).map_err(io::Error::other)?
            {
                self.input.drain(..used);
                return Ok(Some(p));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}
