//! The smallest runnable engine: an echo server.
//!
//! ```text
//! cargo run --release -p ruyi-reactor --example echo -- 127.0.0.1:7000 [loops] [seconds]
//! ```
//! Every byte a client sends comes back. Read it next to `LIFECYCLE.md`: `on_data` sees the
//! bytes of one read, queues them (no syscall), and at the end of the turn the loop writes
//! everything queued for each connection with vectored writes (R6 in `RULES.md`).

use ruyi_reactor::{ConnCtx, Engine, EngineConfig, Handler, StopMode};

struct Echo;

impl Handler for Echo {
    type State = ();
    type Message = ();

    fn on_open(&mut self, _conn: &mut ConnCtx<'_>) {}

    fn on_data(&mut self, conn: &mut ConnCtx<'_>, _state: &mut (), input: &[u8]) -> usize {
        conn.queue_slice(input);
        input.len()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7000".into())
        .parse()?;
    let mut config = EngineConfig::default();
    if let Some(loops) = args.next() {
        config.loops = loops.parse()?;
    }
    let seconds: Option<u64> = args.next().map(|s| s.parse()).transpose()?;

    let mut builder = Engine::builder(config);
    let listener = builder.listen(addr)?;
    let mut engine = builder.start(|_, _| Echo)?;
    println!("echo listening on {}", engine.local_addr(listener));
    match seconds {
        // Bounded runs (benchmarks) stop by themselves, flushing what is queued.
        Some(s) => {
            std::thread::sleep(std::time::Duration::from_secs(s));
            engine.stop(StopMode::Soft);
        }
        None => loop {
            std::thread::park();
        },
    }
    Ok(())
}
