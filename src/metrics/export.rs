//! `GET /metrics` (the Prometheus text format) and `GET /varz` (WuKongIM's statistics,
//! HTTP_API.md §3.2). Both run on an HTTP worker and read relaxed counters only.
//!
//! Names follow the Prometheus conventions: `ruyi_` prefix, the unit in the name
//! (`_bytes`, `_seconds`), counters end in `_total`; `process_*` as the client libraries
//! export them. Each family's HELP and TYPE lines stand directly above its samples.

use super::{process, Exposition, COMMIT, COMMIT_DATE, TREE_STATE, VERSION};
use crate::http::Answer;
use crate::shared::SharedRef;
use crate::storage;
use ruyi_reactor::CloseReason;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;

/// Totals over the loops: connections, bytes in, bytes out, slow-consumer closes.
fn totals(shared: &SharedRef) -> (usize, u64, u64, u64) {
    let (mut conns, mut bytes_in, mut bytes_out, mut slow) = (0, 0, 0, 0);
    for l in shared.loops().loops() {
        let s = l.stats();
        conns += s.connections.load(Relaxed);
        bytes_in += s.bytes_in.load(Relaxed);
        bytes_out += s.bytes_out.load(Relaxed);
        slow += s.closed_for(CloseReason::SlowConsumer);
    }
    (conns, bytes_in, bytes_out, slow)
}

/// `GET /varz`: WuKongIM's statistics keys where they mean something here, 0 or "" where
/// not (HTTP_API.md §3.2), plus Ruyi's own under `ruyi_*`. `mem` is the resident set in
/// bytes and `cpu` the CPU time used since start, in seconds (WuKongIM reports a
/// percentage sampled over time; a total is what a scraper can turn into a rate).
pub fn varz(shared: &SharedRef) -> Answer {
    let (conns, bytes_in, bytes_out, slow) = totals(shared);
    let c = &shared.counters;
    let p = process::cached();
    let v = json!({
        "server_id": shared.config.node_id.to_string(),
        "server_name": "ruyi",
        "version": VERSION,
        // Client connections (logged in), as WuKongIM counts them: not the HTTP request
        // asking, nor sockets still in their handshake (all of them: `ruyi_sockets`).
        "connections": shared.registry.len(),
        "ruyi_sockets": conns,
        "uptime": format!("{}s", shared.started.elapsed().as_secs()),
        "goroutine": 0,
        "mem": p.resident_bytes.unwrap_or(0),
        "cpu": p.cpu_seconds.unwrap_or(0.0),
        "in_msgs": c.sends_in.load(Relaxed),
        "out_msgs": c.deliveries.load(Relaxed),
        "in_bytes": bytes_in,
        "out_bytes": bytes_out,
        "slow_clients": slow,
        "retry_queue": 0,
        "tcp_addr": shared.advertised.tcp,
        "ws_addr": shared.advertised.ws,
        "wss_addr": shared.advertised.wss,
        "manager_addr": "",
        "manager_on": 0,
        "api_url": format!("http://{}", shared.config.http_addr),
        "commit": COMMIT,
        "commit_date": COMMIT_DATE,
        "tree_state": TREE_STATE,
        "manager_uid": "____manager",
        "manager_token_on": u8::from(shared.config.manager_token.is_some()),
        "conversation_cache_count": 0,
        "ruyi_online_users": shared.registry.len(),
        "ruyi_stored": c.stored.load(Relaxed),
        "ruyi_retries": c.retries.load(Relaxed),
        "ruyi_dropped_posts": c.dropped_posts.load(Relaxed),
        "ruyi_rate_limited_sends": c.rate_limited.load(Relaxed),
        // For the console's overview (`http/assets/console`): per-loop load, and the
        // commit histogram's count and sum, from which a mean over any interval follows.
        "ruyi_cluster": shared.cluster.get().map(crate::cluster::Cluster::varz),
        "ruyi_loops": shared.loops().loops().iter().map(|l| json!({
            "connections": l.stats().connections.load(Relaxed),
            "queued_out": l.stats().queued_out.load(Relaxed),
        })).collect::<Vec<_>>(),
        "ruyi_commit_count": shared.storage_health.commit_seconds.count(),
        "ruyi_commit_sum_us": shared.storage_health.commit_seconds.sum_micros(),
        "ruyi_webhook_on": shared.webhooks.is_some(),
        "ruyi_webhook_queue": shared.webhooks.as_ref().map_or(0, |h| h.queued().0),
        "ruyi_webhook_dropped": shared.webhooks.as_ref().map_or(0, |h| h.stats.dropped.load(Relaxed)),
    });
    (200, v.to_string())
}

/// `GET /metrics`.
pub fn metrics(shared: &SharedRef) -> Answer {
    let mut m = Exposition::default();
    m.family("ruyi_build_info", "gauge", "The running build: always 1.")
        .sample(
            "ruyi_build_info",
            &format!("version=\"{VERSION}\",commit=\"{COMMIT}\""),
            1,
        );
    process_metrics(&mut m);
    loop_metrics(shared, &mut m);
    counters(shared, &mut m);
    gauges(shared, &mut m);
    let l = &shared.latency;
    m.histogram(
        "ruyi_storage_commit_seconds",
        "One storage batch, BEGIN to COMMIT (or rollback).",
        &shared.storage_health.commit_seconds,
    );
    m.histogram(
        "ruyi_sendack_seconds",
        "A client's SEND decoded to its SENDACK handed to the connection's loop.",
        &l.sendack,
    );
    m.histogram(
        "ruyi_http_request_seconds",
        "An HTTP API request taken by a worker to its answer handed back.",
        &l.http,
    );
    if let Some(hooks) = &shared.webhooks {
        let st = &hooks.stats;
        m.family(
            "ruyi_webhook_total",
            "counter",
            "Webhook POSTs by outcome, and events dropped.",
        );
        for (outcome, v) in [
            ("delivered", &st.delivered),
            ("failed", &st.failures),
            ("dropped", &st.dropped),
        ] {
            m.sample(
                "ruyi_webhook_total",
                &format!("outcome=\"{outcome}\""),
                v.load(Relaxed),
            );
        }
        let (events, bytes) = hooks.queued();
        m.single(
            "ruyi_webhook_queue_events",
            "gauge",
            "Webhook events waiting to be posted.",
            events,
        );
        m.single(
            "ruyi_webhook_queue_bytes",
            "gauge",
            "Estimated size of the waiting webhook events.",
            bytes,
        );
        m.histogram(
            "ruyi_webhook_post_seconds",
            "One webhook POST, to its response or failure.",
            &st.post_seconds,
        );
    }
    (200, m.finish())
}

fn process_metrics(m: &mut Exposition) {
    let p = process::cached();
    let figures = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes.map(|v| v as f64),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in figures {
        if let Some(v) = value {
            m.single(name, kind, help, v);
        }
    }
}

fn loop_metrics(shared: &SharedRef, m: &mut Exposition) {
    let loops = shared.loops().loops();
    let per_loop =
        |m: &mut Exposition, name: &str, kind: &str, help: &str, f: &dyn Fn(usize) -> u64| {
            m.family(name, kind, help);
            for l in loops {
                m.sample(name, &format!("loop=\"{}\"", l.index()), f(l.index()));
            }
        };
    let stats = |i: usize| loops[i].stats();
    per_loop(
        m,
        "ruyi_connections",
        "gauge",
        "Open connections per event loop.",
        &|i| stats(i).connections.load(Relaxed) as u64,
    );
    per_loop(
        m,
        "ruyi_connections_accepted_total",
        "counter",
        "Connections a loop took from the acceptor.",
        &|i| stats(i).accepted.load(Relaxed),
    );
    m.family(
        "ruyi_connections_closed_total",
        "counter",
        "Connections closed, by loop and reason.",
    );
    for l in loops {
        for reason in CloseReason::ALL {
            m.sample(
                "ruyi_connections_closed_total",
                &format!("loop=\"{}\",reason=\"{}\"", l.index(), reason.name()),
                l.stats().closed_for(reason),
            );
        }
    }
    m.single(
        "ruyi_connections_refused_per_ip_total",
        "counter",
        "Connections refused for max_connections_per_ip: reset at accept, or closed when a trusted proxy named a client at the limit.",
        shared.loops().refused_per_ip(),
    );
    m.family(
        "ruyi_socket_bytes_total",
        "counter",
        "Socket bytes by loop and direction.",
    );
    for l in loops {
        for (direction, v) in [("in", &l.stats().bytes_in), ("out", &l.stats().bytes_out)] {
            m.sample(
                "ruyi_socket_bytes_total",
                &format!("loop=\"{}\",direction=\"{direction}\"", l.index()),
                v.load(Relaxed),
            );
        }
    }
    per_loop(
        m,
        "ruyi_loop_queued_bytes",
        "gauge",
        "Bytes queued for writing on a loop's connections.",
        &|i| stats(i).queued_out.load(Relaxed) as u64,
    );
    per_loop(
        m,
        "ruyi_inbox_depth",
        "gauge",
        "Commands waiting in each loop's inbox.",
        &|i| loops[i].queued_commands() as u64,
    );
}

fn counters(shared: &SharedRef, m: &mut Exposition) {
    let c = &shared.counters;
    let q = &shared.queue.stats;
    for (name, help, value) in [
        ("ruyi_sends_total", "SEND packets accepted from clients.", c.sends_in.load(Relaxed)),
        ("ruyi_stored_total", "Messages committed to storage.", c.stored.load(Relaxed)),
        ("ruyi_deliveries_total", "RECVs queued to connections.", c.deliveries.load(Relaxed)),
        ("ruyi_recv_retries_total", "RECVs re-sent for lack of a RECVACK.", c.retries.load(Relaxed)),
        ("ruyi_dropped_posts_total", "Loop-to-pool posts dropped on a full queue.", c.dropped_posts.load(Relaxed)),
        ("ruyi_rate_limited_sends_total", "SENDs answered with reason 22 (max_sends_per_sec).", c.rate_limited.load(Relaxed)),
        ("ruyi_storage_round_trips_total", "Requests the storage writer sent PostgreSQL (statements, BEGIN, savepoints, COMMIT); 0 on SQLite.", storage::postgres::tx::ROUND_TRIPS.load(Relaxed)),
        ("ruyi_storage_failed_batches_total", "Storage batches that failed and were rolled back (their sends got reason 15).", shared.storage_health.failed_batches.load(Relaxed)),
        ("ruyi_http_sends_failed_total", "HTTP /message/send calls answered with a WuKongIM status other than success (15: storage failed).", c.http_sends_failed.load(Relaxed)),
        ("ruyi_logins_failed_total", "Logins refused for a wrong token, a ban or a failed key exchange.", c.logins_failed.load(Relaxed)),
        ("ruyi_http_unauthorized_total", "HTTP requests refused without the manager token (401).", c.http_unauthorized.load(Relaxed)),
        ("ruyi_logins_shed_total", "Logins closed unanswered in a storm: the auth queue full, or a wait past connect_timeout.", c.logins_shed.load(Relaxed)),
        ("ruyi_logins_limited_total", "Logins refused by a login rate or max_conns_per_uid (CONNACK 22).", c.logins_limited.load(Relaxed)),
        ("ruyi_prelogin_shed_total", "Connections closed because unauthenticated input passed its budget.", c.prelogin_shed.load(Relaxed)),
        ("ruyi_recv_evicted_total", "Unacknowledged RECVs that left a full retry list for the offline queue.", c.evicted_recvs.load(Relaxed)),
        ("ruyi_offline_requeued_total", "Offline entries written for deliveries that missed.", q.requeued.load(Relaxed)),
        ("ruyi_offline_requeued_late_total", "Of those, written at the end of the queue instead of their reserved seq.", q.requeued_late.load(Relaxed)),
        ("ruyi_offline_delivered_total", "Offline entries marked delivered by a RECVACK.", q.delivered.load(Relaxed)),
        ("ruyi_offline_trimmed_total", "Oldest offline entries removed by offline_queue_max_per_user.", q.trimmed.load(Relaxed)),
        ("ruyi_offline_lane_dropped_total", "Requeues or delivered marks given up after repeated storage failures.", q.lane_dropped.load(Relaxed)),
    ] {
        m.single(name, "counter", help, value);
    }
}

fn gauges(shared: &SharedRef, m: &mut Exposition) {
    let dir = &shared.config.data_dir;
    for (name, help, value) in [
        (
            "ruyi_online_users_connections",
            "Authenticated connections.",
            shared.registry.len() as u64,
        ),
        (
            "ruyi_storage_db_bytes",
            "Size of the database file.",
            storage::db_bytes(dir),
        ),
        (
            "ruyi_storage_wal_bytes",
            "Size of the write-ahead log (bounded near wal_max_bytes).",
            storage::wal_bytes(dir),
        ),
        (
            "ruyi_storage_lane_depth",
            "Offline-queue jobs from the loops waiting for the storage writer.",
            shared.writer.lane_len() as u64,
        ),
    ] {
        m.single(name, "gauge", help, value);
    }
    m.family("ruyi_queue_depth", "gauge", "Jobs waiting per pool queue.")
        .sample("ruyi_queue_depth", "pool=\"writer\"", shared.writer.len())
        .sample("ruyi_queue_depth", "pool=\"auth\"", shared.auth.len())
        .sample("ruyi_queue_depth", "pool=\"http\"", shared.http.len());
    for (i, q) in shared.channels.iter().enumerate() {
        m.sample(
            "ruyi_queue_depth",
            &format!("pool=\"channel\",worker=\"{i}\""),
            q.len(),
        );
    }
}
