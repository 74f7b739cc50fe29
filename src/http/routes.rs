//! Every route, at its WuKongIM path, and the handler that answers it.

use super::channels::channel_upsert;
use super::channels::subscriber_add;
use super::messages::message_send;
use super::messages::message_sync;
use super::messages::message_syncack;
use super::users::user_token;
use super::wire::HttpRequest;
use super::{ready, Answer, Handler};
use crate::shared::SharedRef;
use crate::storage::admin::{ConversationOp, ListKind, ListOp};
use serde_json::json;

/// Every route, at its WuKongIM path; each is also served under `/v1` (HTTP_API.md §1.1).
pub(crate) const ROUTES: &[(&str, &str, Handler)] = &[
    ("GET", "/health", |_, _, _| {
        Ok((200, json!({"status": "ok"}).to_string()))
    }),
    ("GET", "/ready", |s, _, _| Ok(ready(s))),
    ("GET", "/healthz", |_, _, _| {
        Ok((200, json!({"status": "ok"}).to_string()))
    }),
    ("GET", "/varz", |s, _, _| {
        Ok(crate::metrics::export::varz(s))
    }),
    ("GET", "/metrics", |s, _, _| {
        Ok(crate::metrics::export::metrics(s))
    }),
    ("GET", "/connz", |s, _, r| super::console::connz(s, r)),
    ("GET", "/console/api/channel", |_, rd, r| {
        super::console::channel(rd, r)
    }),
    ("GET", "/route", |s, _, r| {
        Ok(super::node::route_addrs(s, r))
    }),
    ("POST", "/user/token", |s, rd, r| user_token(s, rd, &r.body)),
    ("POST", "/user/device_quit", |s, _, r| {
        super::users::device_quit(s, &r.body)
    }),
    ("POST", "/user/onlinestatus", |s, _, r| {
        super::users::online_status(s, &r.body)
    }),
    ("POST", "/channel", |s, _, r| channel_upsert(s, &r.body)),
    ("POST", "/channel/info", |s, _, r| {
        super::channels::channel_info(s, &r.body)
    }),
    ("POST", "/channel/delete", |s, _, r| {
        super::channels::channel_delete(s, &r.body)
    }),
    ("POST", "/channel/subscriber_add", |s, _, r| {
        subscriber_add(s, &r.body)
    }),
    ("POST", "/channel/subscriber_remove", |s, _, r| {
        super::channels::subscriber_remove(s, &r.body)
    }),
    ("POST", "/channel/messagesync", |_, rd, r| {
        super::history::channel_messagesync(rd, &r.body)
    }),
    ("GET", "/channel/max_message_seq", |_, rd, r| {
        super::history::max_message_seq(rd, r)
    }),
    ("POST", "/message/send", |s, _, r| message_send(s, &r.body)),
    ("POST", "/message/sendbatch", |s, _, r| {
        super::messages::send_batch(s, &r.body)
    }),
    ("POST", "/channel/blacklist_add", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::Add)
    }),
    ("POST", "/channel/blacklist_set", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::Set)
    }),
    ("POST", "/channel/blacklist_remove", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::Remove)
    }),
    ("POST", "/channel/blacklist_remove_all", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::RemoveAll)
    }),
    ("POST", "/channel/whitelist_add", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::Add)
    }),
    ("POST", "/channel/whitelist_set", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::Set)
    }),
    ("POST", "/channel/whitelist_remove", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::Remove)
    }),
    ("POST", "/channel/whitelist_remove_all", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::RemoveAll)
    }),
    ("GET", "/channel/whitelist", |_, rd, r| {
        super::channels::whitelist(rd, r)
    }),
    ("POST", "/channel/subscriber_remove_all", |s, _, r| {
        super::channels::subscriber_remove_all(s, &r.body)
    }),
    ("POST", "/messages", |_, rd, r| {
        super::history::messages(rd, &r.body)
    }),
    ("POST", "/message", |_, rd, r| {
        super::history::message(rd, &r.body)
    }),
    ("POST", "/route/batch", |s, _, r| {
        super::node::route_batch(s, &r.body)
    }),
    ("GET", "/cluster/nodes", |s, _, _| {
        Ok(super::node::cluster_nodes(s))
    }),
    ("POST", "/user/systemuids_add", |s, rd, r| {
        super::users::system_uids_change(s, rd, &r.body, true)
    }),
    ("POST", "/user/systemuids_remove", |s, rd, r| {
        super::users::system_uids_change(s, rd, &r.body, false)
    }),
    ("GET", "/user/systemuids", |_, rd, _| {
        super::users::system_uids(rd)
    }),
    ("POST", "/conversation/syncMessages", |_, rd, r| {
        super::conversations::sync_messages(rd, &r.body)
    }),
    ("GET", "/channel/last_message", |_, rd, r| {
        super::history::last_message(rd, r)
    }),
    ("POST", "/conversation/sync", |_, rd, r| {
        super::conversations::conversation_sync(rd, &r.body)
    }),
    ("POST", "/conversations/clearUnread", |s, _, r| {
        conv(s, r, ConversationOp::ClearUnread)
    }),
    ("POST", "/conversations/setUnread", |s, _, r| {
        conv(s, r, ConversationOp::SetUnread)
    }),
    ("POST", "/conversations/delete", |s, _, r| {
        conv(s, r, ConversationOp::Delete)
    }),
    ("POST", "/message/sync", |s, rd, r| {
        message_sync(s, rd, &r.body)
    }),
    ("POST", "/message/syncack", |s, _, r| {
        message_syncack(s, &r.body)
    }),
];

pub(crate) fn list(
    shared: &SharedRef,
    req: &HttpRequest,
    kind: ListKind,
    op: ListOp,
) -> Result<Answer, Answer> {
    super::channels::list_change(shared, &req.body, kind, op)
}

pub(crate) fn conv(
    shared: &SharedRef,
    req: &HttpRequest,
    op: ConversationOp,
) -> Result<Answer, Answer> {
    super::conversations::conversation_change(shared, &req.body, op)
}
