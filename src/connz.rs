//! `GET /connz` (HTTP_API.md §3.3, optional in WuKongIM): the logged-in client connections,
//! filtered, sorted and paged. Each loop describes its own connections
//! (`ToLoop::Connz`, answered from the loop: no socket call but `getpeername`); the HTTP
//! worker that asked merges the loops' rows here.
//!
//! Choices where the spec leaves them open: `sort` takes `id` (the default: loop, slot,
//! generation), `uptime`, `idle`, `pending_bytes`, `in_msgs` or `out_msgs`, largest first
//! except `id`, ties in id order (so pages do not overlap); `limit` defaults to 100 and is
//! capped at 1,000; `uid` keeps that user's connections only (the loops then describe only
//! those, found through the registry). `in_msgs` counts SENDs taken from the connection
//! (refused ones included), `out_msgs` RECVs written to it (retries not counted).

use ruyi_reactor::ConnId;
use serde_json::{json, Value};

/// One connection, as its loop saw it.
#[derive(Clone, Debug)]
pub struct ConnRow {
    /// The connection.
    pub conn: ConnId,
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
    let key = |r: &ConnRow| -> u64 {
        match sort {
            "uptime" => r.uptime,
            "idle" => r.idle,
            "pending_bytes" => r.pending_bytes as u64,
            "in_msgs" => u64::from(r.in_msgs),
            "out_msgs" => u64::from(r.out_msgs),
            _ => 0,
        }
    };
    rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.conn.cmp(&b.conn)));
    let total = rows.len();
    let limit = limit.clamp(1, MAX_LIMIT);
    let connections: Vec<Value> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| {
            json!({
                "id": r.conn.to_string(),
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

    fn row(id: (usize, usize), uid: &str, idle: u64) -> ConnRow {
        ConnRow {
            conn: ConnId::new(id.0, id.1, 1),
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
            row((0, 1), "a", 3),
            row((0, 2), "b", 9),
            row((1, 1), "a", 7),
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

    #[test]
    fn ids_sort_as_numbers_and_ties_keep_one_order_whatever_the_loops_answered() {
        let rows = vec![
            row((0, 10), "a", 1),
            row((0, 2), "b", 1),
            row((10, 0), "c", 1),
        ];
        let v = page(rows.clone(), None, "id", 0, 3);
        let ids: Vec<_> = (0..3).map(|i| v["connections"][i]["id"].clone()).collect();
        assert_eq!(ids, ["0:2#1", "0:10#1", "10:0#1"]);
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(
            page(rows, None, "idle", 0, 3)["connections"],
            page(reversed, None, "idle", 0, 3)["connections"]
        );
    }
}
