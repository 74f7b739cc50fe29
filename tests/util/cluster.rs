//! A cluster of the real binary for the cluster tests: nodes on a private PostgreSQL and
//! NATS, and the helpers the tests share.

use super::nats::Nats;
use super::pg::Pg;
use super::*;
use ruyi_proto::types::{channel_type::PERSON, reason};

/// One node of a test cluster: the real binary, on its own data directory and ports.
pub struct Node {
    pub id: u16,
    pub dir: std::path::PathBuf,
    pub process: RuyiProcess,
}

impl Node {
    pub fn spawn(store: &str, nats: &Nats, id: u16) -> Node {
        let dir = temp_dir(&format!("node{id}"));
        std::fs::write(dir.join("test-store"), store).unwrap();
        let process = Self::run(&dir, free_addr(), free_addr(), nats, id);
        Node { id, dir, process }
    }

    /// [`Node::spawn`] with extra environment variables (a restart drops them).
    pub fn spawn_with_env(store: &str, nats: &Nats, id: u16, env: &[(&str, &str)]) -> Node {
        let dir = temp_dir(&format!("node{id}"));
        std::fs::write(dir.join("test-store"), store).unwrap();
        let args = ["--nats", &nats.url(), "--node-id", &id.to_string()];
        let process = RuyiProcess::spawn_with_args(&dir, free_addr(), free_addr(), env, &args);
        Node { id, dir, process }
    }

    pub fn run(
        dir: &std::path::Path,
        tcp: std::net::SocketAddr,
        http: std::net::SocketAddr,
        nats: &Nats,
        id: u16,
    ) -> RuyiProcess {
        RuyiProcess::spawn_with_args(
            dir,
            tcp,
            http,
            &[],
            &["--nats", &nats.url(), "--node-id", &id.to_string()],
        )
    }

    /// kill -9, then the same binary again on the same directory and ports.
    pub fn restart(&mut self, nats: &Nats) {
        self.process.kill9();
        self.process = Self::run(
            &self.dir,
            self.process.tcp,
            self.process.http,
            nats,
            self.id,
        );
    }

    /// `/cluster/nodes` as this node answers it: the live node ids, and whether NATS is up.
    pub fn view(&self) -> (Vec<u64>, bool) {
        let (status, text) = http_text(self.process.http, "/cluster/nodes");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_u64().unwrap())
            .collect();
        (ids, v["nats_connected"].as_bool().unwrap())
    }

    /// The leader this node names, if any.
    pub fn leader(&self) -> Option<u64> {
        let (status, text) = http_text(self.process.http, "/cluster/nodes");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["leader"].as_u64()
    }

    /// One person message from `from` to `to` through this node: its SENDACK.
    pub fn send(&self, from: &str, to: &str, no: &str) -> ruyi_proto::SendackPacket {
        let mut c = Client::ok(self.process.tcp, &Login::new(from, "x"));
        c.send(to, PERSON, b"hello", no);
        c.sendack()
    }

    pub fn route(&self, uid: &str) -> String {
        let (status, text) = http_text(self.process.http, &format!("/route?uid={uid}"));
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["tcp_addr"].as_str().unwrap().to_owned()
    }
}

pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private PostgreSQL and NATS, and three nodes on them that agree on a leader.
pub struct Three {
    pub nodes: Vec<Node>,
    pub lead: usize,
    pub followers: Vec<usize>,
    pub store: String,
    pub _nats: Nats,
    pub _pg: Pg,
}

impl Three {
    pub fn start(name: &str) -> Option<Three> {
        let pg = Pg::start()?;
        let nats = Nats::start()?;
        let store = pg.database(name);
        let (nodes, lead) = cluster_of_three(&store, &nats);
        let followers = (0..3).filter(|&i| i != lead).collect();
        Some(Three {
            nodes,
            lead,
            followers,
            store,
            _nats: nats,
            _pg: pg,
        })
    }
}

/// Three nodes, all live and agreeing on a leader: (nodes, index of the leader).
pub fn cluster_of_three(store: &str, nats: &Nats) -> (Vec<Node>, usize) {
    let nodes: Vec<Node> = (1..=3).map(|id| Node::spawn(store, nats, id)).collect();
    let lead = agree(&nodes);
    (nodes, lead)
}

/// Waits until the three `nodes` are live and agree on a leader: its index.
pub fn agree(nodes: &[Node]) -> usize {
    let mut leader = None;
    wait_for(
        "three live nodes and one leader",
        Duration::from_secs(10),
        || {
            let named: Vec<_> = nodes.iter().map(Node::leader).collect();
            leader = named[0];
            leader.is_some()
                && named.iter().all(|l| *l == leader)
                && nodes.iter().all(|n| n.view() == (vec![1, 2, 3], true))
        },
    );
    leader.unwrap() as usize - 1
}

/// Reads `n` RECVs, acknowledging each: (payload, seq) in arrival order.
pub fn receive(c: &mut Client, n: usize) -> Vec<(String, u32)> {
    (0..n)
        .map(|_| {
            let r = c.recv();
            c.recvack(&r);
            (
                String::from_utf8_lossy(&r.payload).into_owned(),
                r.message_seq,
            )
        })
        .collect()
}

/// What one sender saw acknowledged: (client_msg_no, seq, message id).
pub type Acks = Vec<(String, u32, i64)>;

/// Sends `{uid}-{n}` for n = 0, 1, … to `to` until `stop`, each resent (same number, as an
/// SDK does) until SUCCESS, reconnecting to `addr` whenever the connection fails.
pub fn stubborn_sender(
    addr: std::net::SocketAddr,
    uid: String,
    to: String,
    channel_type: u8,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Acks {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let mut acks = Vec::new();
    let mut client: Option<Client> = None;
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let no = format!("{uid}-{n}");
        let attempt = catch_unwind(AssertUnwindSafe(|| {
            let c = client.get_or_insert_with(|| Client::ok(addr, &Login::new(&uid, "x")));
            c.send(&to, channel_type, no.as_bytes(), &no);
            loop {
                match c.read_packet(Duration::from_secs(10)) {
                    Some(ruyi_proto::Packet::Recv(r)) => c.recvack(&r),
                    Some(ruyi_proto::Packet::Sendack(a)) => break Some(a),
                    _ => break None,
                }
            }
        }));
        match attempt {
            Ok(Some(ack)) if ack.reason_code == reason::SUCCESS => {
                acks.push((no, ack.message_seq, ack.message_id));
                n += 1;
            }
            Ok(Some(_)) => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) | Err(_) => {
                client = None; // closed (a resync, a dead node): log in again
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    acks
}

/// The messages of `sent` that are neither in `got` (received and acknowledged by one of
/// `uid`'s devices) nor in `uid`'s queue on `http`, once none are or `within` has passed:
/// requeues from another node may take a moment to arrive.
pub fn neither_received_nor_queued(
    http: std::net::SocketAddr,
    uid: &str,
    sent: &[i64],
    got: &std::collections::HashSet<i64>,
    within: Duration,
) -> Vec<i64> {
    let deadline = Instant::now() + within;
    loop {
        let queued: std::collections::HashSet<i64> = queue(http, uid)
            .iter()
            .map(|m| m["message_id"].as_i64().unwrap())
            .collect();
        let missing: Vec<i64> = sent
            .iter()
            .filter(|id| !got.contains(id) && !queued.contains(id))
            .copied()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
