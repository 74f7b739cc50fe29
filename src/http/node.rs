//! Where clients connect (HTTP_API.md §3.4): `/route` and `/route/batch`, from the
//! advertised addresses (`advertise.rs`).

use super::wire::HttpRequest;
use super::{parse, query_param, Answer};
use crate::shared::SharedRef;
use serde_json::json;

/// `GET /route`: where clients should connect (HTTP_API.md §3.4); `intranet=1` gives the
/// TCP address alone. Single node: this server's advertised addresses (`advertise.rs`).
pub fn route_addrs(shared: &SharedRef, req: &HttpRequest) -> Answer {
    let a = &shared.advertised;
    if query_param(&req.query, "intranet").as_deref() == Some("1") {
        return (200, json!({"tcp_addr": a.tcp}).to_string());
    }
    (
        200,
        json!({"tcp_addr": a.tcp, "ws_addr": a.ws, "wss_addr": a.wss}).to_string(),
    )
}

/// `POST /route/batch`: single node, so one entry with every uid (HTTP_API.md §3.4).
pub fn route_batch(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let uids: Vec<String> = parse(body)?;
    let a = &shared.advertised;
    Ok((
        200,
        json!([{"uids": uids, "tcp_addr": a.tcp, "ws_addr": a.ws, "wss_addr": a.wss}]).to_string(),
    ))
}
