//! Where clients connect (HTTP_API.md §3.4): `/route` and `/route/batch`, from the
//! advertised addresses (`advertise.rs`).

use super::wire::HttpRequest;
use super::{parse, query_param, Answer};
use crate::shared::SharedRef;
use serde_json::json;

/// `GET /route`: where clients should connect (HTTP_API.md §3.4); `intranet=1` gives the
/// TCP address alone. Single node: this server's advertised addresses (`advertise.rs`). In
/// a cluster: the live node the uid hashes to (`cluster/members.rs`), or without a uid the
/// live node with the fewest connections.
pub fn route_addrs(shared: &SharedRef, req: &HttpRequest) -> Answer {
    let (tcp, ws, wss) = match shared.cluster.get() {
        Some(cluster) => {
            let node = match query_param(&req.query, "uid") {
                Some(uid) if !uid.is_empty() => cluster.members.route(&uid),
                _ => cluster
                    .members
                    .live()
                    .into_iter()
                    .min_by_key(|n| (n.connections, n.node))
                    .unwrap_or_else(|| cluster.members.route("")),
            };
            (node.tcp_addr, node.ws_addr, node.wss_addr)
        }
        None => {
            let a = &shared.advertised;
            (a.tcp.clone(), a.ws.clone(), a.wss.clone())
        }
    };
    if query_param(&req.query, "intranet").as_deref() == Some("1") {
        return (200, json!({ "tcp_addr": tcp }).to_string());
    }
    (
        200,
        json!({"tcp_addr": tcp, "ws_addr": ws, "wss_addr": wss}).to_string(),
    )
}

/// `POST /route/batch`: the uids grouped by the node each should connect to; a single
/// node gives one entry with every uid (HTTP_API.md §3.4).
pub fn route_batch(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let uids: Vec<String> = parse(body)?;
    let Some(cluster) = shared.cluster.get() else {
        let a = &shared.advertised;
        return Ok((
            200,
            json!([{"uids": uids, "tcp_addr": a.tcp, "ws_addr": a.ws, "wss_addr": a.wss}])
                .to_string(),
        ));
    };
    let live = cluster.members.live();
    let mut groups: Vec<(u16, Vec<String>)> = Vec::new();
    for uid in uids {
        let node = crate::cluster::members::pick(&live, &uid).map_or(0, |n| n.node);
        match groups.iter_mut().find(|(n, _)| *n == node) {
            Some((_, g)) => g.push(uid),
            None => groups.push((node, vec![uid])),
        }
    }
    let entries: Vec<_> = groups
        .into_iter()
        .filter_map(|(node, uids)| {
            let n = live.iter().find(|n| n.node == node)?;
            Some(
                json!({"uids": uids, "tcp_addr": n.tcp_addr, "ws_addr": n.ws_addr,
                        "wss_addr": n.wss_addr}),
            )
        })
        .collect();
    Ok((200, serde_json::Value::Array(entries).to_string()))
}

/// `GET /cluster/nodes`: the live nodes as this one sees them (a single node: itself
/// alone, marked `cluster: false`).
pub fn cluster_nodes(shared: &SharedRef) -> Answer {
    let Some(cluster) = shared.cluster.get() else {
        let a = &shared.advertised;
        return (
            200,
            json!({"cluster": false, "node": shared.config.node_id, "nodes": [{
                "node": shared.config.node_id, "tcp_addr": a.tcp, "ws_addr": a.ws,
                "wss_addr": a.wss, "connections": shared.registry.len(),
            }]})
            .to_string(),
        );
    };
    (
        200,
        json!({
            "cluster": true,
            "name": cluster.name,
            "node": cluster.members.me(),
            "leader": cluster.leader.get(),
            "nats_connected": cluster.bus.connected(),
            "nodes": cluster.members.live(),
        })
        .to_string(),
    )
}
