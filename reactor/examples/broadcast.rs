//! A chat room: every line a client sends reaches every client, on every loop. It shows
//! the engine's other half, next to `echo.rs`: messages between threads and loops.
//!
//! ```text
//! cargo run --release -p ruyi-reactor --example broadcast -- 127.0.0.1:7003 [loops] [seconds]
//! ```
//! Try it with two or three `nc 127.0.0.1 7003`.
//!
//! - A loop cannot write to another loop's connections (R2), so a line is **posted** to
//!   every loop (`LoopHandle::try_post`), and each loop's handler queues it on its own
//!   connections in `Handler::on_message`, reaching them through `LoopCtx::conn`, which
//!   checks loop, slot and generation (R8): a member that closed in between is skipped.
//! - The handler runs on a loop thread, so it uses the `try_` form (R1): when another
//!   loop's inbox is full, the line is dropped for that loop and counted, never waited for
//!   (two loops waiting on each other would deadlock). A real server would tell the sender.
//! - The main thread is not a loop thread: it announces the time with the blocking `post`,
//!   which waits for room instead of dropping.
//! - A client that stops reading is closed by the output cap (`max_outbound_bytes`) rather
//!   than growing the server's memory (R5).

use bytes::Bytes;
use ruyi_reactor::{
    CloseReason, ConnCtx, ConnId, Engine, EngineConfig, Handler, Handles, LoopCtx, StopMode,
    TrySendFailure,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Lines longer than this are cut off: one client must not make the others buffer a
/// megabyte of its "line".
const MAX_LINE: usize = 4096;

/// One per loop: the loop's members and the way to every loop.
struct Room {
    members: Vec<ConnId>,
    loops: Handles<Bytes>,
    dropped: Arc<AtomicU64>,
}

impl Room {
    fn broadcast(&self, line: Bytes) {
        for lp in self.loops.loops() {
            match lp.try_post(line.clone()) {
                Ok(()) => {}
                Err(TrySendFailure::Full) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendFailure::Gone) => {} // Stopping.
            }
        }
    }
}

impl Handler for Room {
    type State = ();
    type Message = Bytes;

    fn on_open(&mut self, conn: &mut ConnCtx<'_>) {
        self.members.push(conn.id());
        conn.queue_slice(b"welcome: every line you send goes to everyone\n");
    }

    fn on_data(&mut self, conn: &mut ConnCtx<'_>, _: &mut (), input: &[u8]) -> usize {
        let mut consumed = 0;
        while let Some(end) = input[consumed..].iter().position(|&b| b == b'\n') {
            let line = &input[consumed..consumed + end + 1];
            let text = format!("{}: {}", conn.id(), String::from_utf8_lossy(line));
            self.broadcast(Bytes::from(text));
            consumed += end + 1;
        }
        if input.len() - consumed > MAX_LINE {
            conn.queue_slice(b"line too long\n");
            conn.close_after_flush();
            return input.len();
        }
        consumed // A partial line stays with the engine until its newline arrives.
    }

    fn on_message(&mut self, lp: &mut LoopCtx<'_, ()>, line: Bytes) {
        for &id in &self.members {
            if let Some((mut conn, _)) = lp.conn(id) {
                conn.queue(line.clone()); // Shared, not copied, between members (R7).
            }
        }
    }

    fn on_close(&mut self, id: ConnId, _: (), _: CloseReason) {
        self.members.retain(|&m| m != id);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7003".into())
        .parse()?;
    let mut config = EngineConfig::default();
    if let Some(loops) = args.next() {
        config.loops = loops.parse()?;
    }
    let seconds: Option<u64> = args.next().map(|s| s.parse()).transpose()?;

    let dropped = Arc::new(AtomicU64::new(0));
    let for_loops = Arc::clone(&dropped);
    let mut builder = Engine::builder(config);
    let listener = builder.listen(addr)?;
    let mut engine = builder.start(move |_, handles| Room {
        members: Vec::new(),
        loops: handles.clone(),
        dropped: Arc::clone(&for_loops),
    })?;
    println!("chat room on {}", engine.local_addr(listener));

    let handles = engine.handles();
    let mut elapsed = 0;
    while seconds.is_none_or(|s| elapsed < s) {
        std::thread::sleep(Duration::from_secs(1));
        elapsed += 1;
        if elapsed % 5 == 0 {
            let note = Bytes::from(format!("server: {elapsed} s up\n"));
            for lp in handles.loops() {
                let _ = lp.post(note.clone()); // Not a loop thread: waiting is allowed.
            }
        }
    }
    engine.stop(StopMode::Soft);
    println!(
        "stopped; {} lines dropped at full inboxes",
        dropped.load(Ordering::Relaxed)
    );
    Ok(())
}
