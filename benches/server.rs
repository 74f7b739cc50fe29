//! The server's own benches (issue 21 item 6), beside the codec's (`protocol/benches`):
//! the three per-message and per-delivery costs the fan-out and person rows of
//! BENCHMARKS.md are made of.
//!
//! - `plan`: a channel worker's fan-out plan for one message to a group of 1,000 online
//!   members (tick the push clock, look every member's connections up in the registry).
//! - `recv`: what a loop does per receiving connection: the encrypted RECV sealed and
//!   encoded in the loop's scratch buffers (`gateway/deliver.rs`), against the plain
//!   frame encoded once and shared.
//! - `commit`: the storage writer (SQLite, the embedded default) storing batches of person
//!   messages end to end: the jobs through its mailbox, one transaction per batch, the
//!   committed messages handed to the outlet.
//!
//! ```text
//! cargo bench --bench server [-- --warm-up-time 1 --measurement-time 3]
//! ```

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ruyi::message::{ChannelKey, Committed, Message, Planned, Reply};
use ruyi::registry::{Device, Registry};
use ruyi::storage::append::Outlet;
use ruyi::storage::writer::{Job, StorageHealth, Writer, WriterSettings};
use ruyi::storage::{PgSettings, Store};
use ruyi_proto::crypto::{public_key_b64, server_handshake};
use ruyi_proto::{Flags, RecvHead, SealScratch, Setting};
use ruyi_reactor::ConnId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MEMBERS: usize = 1_000;

/// A 100-byte chat payload, as in every row of BENCHMARKS.md.
fn payload() -> Bytes {
    let mut p = br#"{"type":1,"content":"#.to_vec();
    p.resize(99, b'x');
    p.push(b'}');
    Bytes::from(p)
}

fn plan(c: &mut Criterion) {
    let registry = Registry::default();
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("member-{i:04}")).collect();
    for (i, uid) in members.iter().enumerate() {
        registry.add(
            uid,
            Device {
                conn: ConnId::new(i % 2, i, 1),
                device_flag: 0,
                level: 1,
                device_id: "d".into(),
                login_no: 0,
                epoch: 0,
            },
        );
    }
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("one message to 1,000 online members", |b| {
        let mut targets: Vec<ConnId> = Vec::with_capacity(MEMBERS);
        b.iter(|| {
            targets.clear();
            let push_no = registry.clock.tick();
            for uid in &members {
                registry.conns_of(uid, &mut targets);
            }
            (push_no, targets.len())
        })
    });
    g.finish();
}

fn recv(c: &mut Criterion) {
    let cipher = server_handshake(&public_key_b64([9u8; 32]))
        .expect("a valid key")
        .cipher;
    let payload = payload();
    let client_msg_no = "c0ffee00c0ffee00c0ffee00c0ffee00";
    let head = RecvHead {
        flags: Flags(Flags::RED_DOT),
        setting: Setting(0),
        from_uid: "member-0001",
        channel_id: "group-0001",
        channel_type: 2,
        expire: 0,
        client_msg_no,
        stream_flag: 0,
        stream_no: "",
        stream_id: 0,
        message_id: 1_800_000_000_000_000_000,
        message_seq: 42,
        timestamp: 1_700_000_000,
        topic: "",
    };
    let mut scratch = SealScratch::default();
    let mut buf = BytesMut::with_capacity(1024);
    let mut g = c.benchmark_group("recv");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encrypted, per receiving connection", |b| {
        b.iter(|| {
            let (wire, key) = cipher.seal_recv_into(black_box(&head), &payload, &mut scratch);
            let key = std::str::from_utf8(&key).unwrap_or_default();
            buf.clear();
            head.encode(5, key, wire, &mut buf).expect("encodable");
            buf.split().freeze()
        })
    });
    g.bench_function("plain, one frame shared by every receiver", |b| {
        b.iter(|| {
            buf.clear();
            head.encode(5, "", black_box(&payload), &mut buf)
                .expect("encodable");
            buf.split().freeze()
        })
    });
    g.finish();
}

/// Counts what the writer committed.
struct Counting(Arc<AtomicUsize>);

impl Outlet for Counting {
    fn push(&mut self, committed: Vec<Committed>) {
        self.0.fetch_add(committed.len(), Ordering::Release);
    }
}

fn person_message(n: u64) -> Box<Planned> {
    let from = format!("sender-{}", n % 100);
    let to = format!("receiver-{}", n % 100);
    Box::new(Planned {
        message: Message {
            message_id: 1_800_000_000_000_000_000 + n as i64,
            client_msg_no: format!("{from}-{n}"),
            channel: ChannelKey::new(format!("{from}@{to}"), 1),
            addressed_to: to.clone(),
            from_uid: from,
            payload: payload(),
            ..Message::placeholder(0)
        },
        targets: Vec::new(),
        push_no: 0,
        recipients: Arc::from(vec![to]),
        queued: true,
        command: false,
        webhook_offline: Vec::new(),
        reply: Reply::None,
    })
}

fn commit(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("ruyi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let store = Store::parse(
        "sqlite",
        dir.clone(),
        false,
        64 << 20,
        PgSettings::default(),
    )
    .expect("sqlite");
    let writer_store = store
        .open_writer(|t| t.to_owned())
        .expect("the store opens");
    let (tx, rx) = ruyi::mailbox::bounded(65_536);
    let committed = Arc::new(AtomicUsize::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let writer = Writer::new(
        writer_store,
        rx,
        Box::new(Counting(Arc::clone(&committed))),
        WriterSettings {
            max_batch: 1024,
            commit_interval: Duration::ZERO,
            max_queue_per_user: 10_000,
        },
        Arc::default(),
        Arc::new(StorageHealth::default()),
        Arc::clone(&stopping),
    );
    let thread = std::thread::spawn(move || writer.run());
    let mut g = c.benchmark_group("commit");
    g.sample_size(20);
    let mut next = 0u64;
    for batch in [1u64, 100] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("{batch} person messages, stored and queued"), |b| {
            b.iter_batched(
                || {
                    let jobs: Vec<_> = (next..next + batch).map(person_message).collect();
                    next += batch;
                    jobs
                },
                |jobs| {
                    let target = committed.load(Ordering::Acquire) + jobs.len();
                    for job in jobs {
                        tx.send(Job::Message(job)).expect("the writer runs");
                    }
                    while committed.load(Ordering::Acquire) < target {
                        std::hint::spin_loop();
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    stopping.store(true, Ordering::Release);
    drop(tx);
    let _ = thread.join();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, plan, recv, commit);
criterion_main!(benches);
