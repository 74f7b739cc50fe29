//! `GET /connz` (HTTP_API.md §3.3, optional in WuKongIM): the logged-in client connections,
//! filtered, sorted and paged. Each loop describes its own connections
//! (`ToLoop::Connz`, answered from the loop: no socket call but `getpeername`); the HTTP
//! worker that asked merges the loops' rows here.
//!
//! Choices where the spec leaves them open: `sort` takes `id` (the default), `uptime`,
//! `idle`, `pending_bytes`, `in_msgs` or `out_msgs`, largest first except `id`; `limit`
//! defaults to 100 and is capped at 1,000; `uid` keeps that user's connections only.

use serde_json::{json, Value};

/// One connection, as its loop saw it.
#[derive(Clone, Debug)]
pub struct ConnRow {
    /// `loop:slot#generation`.
    pub id: String,
    /// The user.
    pub uid: String,
    /// 0 APP, 1 WEB, 2 PC.
    pub device_flag: u8,
    /// 0 slave, 1 master.
    pub device_level: u8,
    /// The peer's address, if the socket still knows it.
    pub peer: Option<std::net::SocketAddr>,
    /// Seconds since the login.
    pub uptime: u64,
    /// Seconds since the last inbound bytes.
    pub idle: u64,
    /// Bytes queued for it and not yet written.
    pub pending_bytes: usize,
    /// SENDs it made since the login.
    pub in_msgs: u32,
    /// RECVs it was sent since the login.
    pub out_msgs: u32,
}

/// The sort orders `/connz` accepts.
pub const SORTS: &[&str] = &[
    "id",
    "uptime",
    "idle",
    "pending_bytes",
    "in_msgs",
    "out_msgs",
];

/// Rows per page at most.
pub const MAX_LIMIT: usize = 1000;

/// The `/connz` answer for `rows` (every loop's), filtered, sorted and paged. `sort` must
/// be one of [`SORTS`].
pub fn page(
    mut rows: Vec<ConnRow>,
    uid: Option<&str>,
    sort: &str,
    offset: usize,
    limit: usize,
) -> Value {
    if let Some(uid) = uid {
        rows.retain(|r| r.uid == uid);
    }
    match sort {
        "uptime" => rows.sort_by_key(|r| std::cmp::Reverse(r.uptime)),
        "idle" => rows.sort_by_key(|r| std::cmp::Reverse(r.idle)),
        "pending_bytes" => rows.sort_by_key(|r| std::cmp::Reverse(r.pending_bytes)),
        "in_msgs" => rows.sort_by_key(|r| std::cmp::Reverse(r.in_msgs)),
        "out_msgs" => rows.sort_by_key(|r| std::cmp::Reverse(r.out_msgs)),
        _ => rows.sort_by(|a, b| a.id.cmp(&b.id)),
    }
    let total = rows.len();
    let limit = limit.clamp(1, MAX_LIMIT);
    let connections: Vec<Value> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| {
            json!({
                "id": r.id,
                "uid": r.uid,
                "device_flag": r.device_flag,
                "device_level": r.device_level,
                "ip": r.peer.map_or(String::new(), |p| p.ip().to_string()),
                "port": r.peer.map_or(0, |p| p.port()),
                "uptime": r.uptime,
                "idle": r.idle,
                "pending_bytes": r.pending_bytes,
                "in_msgs": r.in_msgs,
                "out_msgs": r.out_msgs,
            })
        })
        .collect();
    json!({
        "now": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "total": total,
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "connections": connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, uid: &str, idle: u64) -> ConnRow {
        ConnRow {
            id: id.into(),
            uid: uid.into(),
            device_flag: 1,
            device_level: 0,
            peer: None,
            uptime: 5,
            idle,
            pending_bytes: 0,
            in_msgs: 0,
            out_msgs: 0,
        }
    }

    #[test]
    fn filtered_sorted_and_paged() {
        let rows = vec![
            row("0:1#1", "a", 3),
            row("0:2#1", "b", 9),
            row("1:1#1", "a", 7),
        ];
        let v = page(rows.clone(), Some("a"), "idle", 0, 10);
        assert_eq!(v["total"], 2);
        assert_eq!(v["connections"][0]["id"], "1:1#1", "the idlest first");
        let v = page(rows, None, "id", 1, 1);
        assert_eq!(
            (
                v["total"].as_u64(),
                v["connections"].as_array().map(Vec::len)
            ),
            (Some(3), Some(1))
        );
        assert_eq!(v["connections"][0]["id"], "0:2#1");
    }
}
