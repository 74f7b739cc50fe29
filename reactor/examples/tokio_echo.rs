//! Baseline for the benchmarks: the same echo on tokio's multi-thread runtime.
//!
//! ```text
//! cargo run --release -p ruyi-reactor --example tokio_echo -- 127.0.0.1:7001 [workers] [seconds]
//! ```
//! One task per connection, a 64 KiB read buffer, `write_all` of what was read: the idiomatic
//! tokio echo server, so the comparison is with what people would write instead.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7001".into())
        .parse()?;
    let workers: usize = match args.next() {
        Some(w) => w.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let seconds: Option<u64> = args.next().map(|s| s.parse()).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("tokio echo listening on {}", listener.local_addr()?);
        let serve = async {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        };
        match seconds {
            Some(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(s), serve).await;
            }
            None => serve.await,
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}
