//! The HTTP API routes beyond the core (issue 5), over real sockets.

#![allow(clippy::unwrap_used)]

mod util;

use base64::Engine as _;
use ruyi_proto::types::reason;
use ruyi_proto::Packet;
use serde_json::{json, Value};
use std::time::Duration;
use util::*;

#[path = "api/guards.rs"]
mod guards;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn seqs(v: &Value) -> Vec<u64> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn channel_history_follows_the_spec_examples() {
    let server = start("history", |_| {});
    let http = server.http_addr();
    post(
        http,
        "/channel",
        json!({"channel_id": "h", "channel_type": 2, "subscribers": ["x"]}),
    );
    for i in 0..100 {
        let (status, _) = post(
            http,
            "/message/send",
            json!({"channel_id": "h", "channel_type": 2, "from_uid": "x", "payload": b64(&format!("{{\"n\":{i}}}"))}),
        );
        assert_eq!(status, 200);
    }
    let sync = |start: u32, end: u32, pull: u8| {
        let (status, v) = post(
            http,
            "/channel/messagesync",
            json!({"login_uid": "x", "channel_id": "h", "channel_type": 2, "start_message_seq": start, "end_message_seq": end, "limit": 10, "pull_mode": pull}),
        );
        assert_eq!(status, 200);
        v
    };
    assert_eq!(seqs(&sync(100, 0, 0)), (91..=100).collect::<Vec<_>>());
    assert_eq!(seqs(&sync(5, 0, 0)), (1..=5).collect::<Vec<_>>());
    let v = sync(100, 95, 0);
    assert_eq!(seqs(&v), (96..=100).collect::<Vec<_>>());
    assert_eq!(v["more"], 0);
    let v = sync(50, 0, 1);
    assert_eq!(seqs(&v), (50..=59).collect::<Vec<_>>());
    assert_eq!(v["more"], 1);
    assert_eq!(
        seqs(&sync(0, 0, 0)),
        (91..=100).collect::<Vec<_>>(),
        "newest first page"
    );
    let payload = base64::engine::general_purpose::STANDARD
        .decode(sync(1, 2, 1)["messages"][0]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(payload, br#"{"n":0}"#);
    let (_, v) = http_get(http, "/channel/max_message_seq?channel_id=h&channel_type=2");
    assert_eq!(v["message_seq"], 100);
    let (status, v) = post(
        http,
        "/channel/messagesync",
        json!({"login_uid": "x", "channel_id": "never", "channel_type": 2, "limit": 10}),
    );
    assert_eq!((status, v["messages"].as_array().unwrap().len()), (200, 0));
    let (status, _) = post(
        http,
        "/channel/messagesync",
        json!({"channel_id": "h", "channel_type": 2}),
    );
    assert_eq!(status, 400, "login_uid is required");
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    http(addr, "GET", path, &Value::Null)
}

#[test]
fn device_quit_kicks_and_blocks_the_device() {
    let server = start("quit", |_| {});
    register(&server, "vic", "t", 1, 0);
    let mut vic = Client::ok(server.tcp_addr(), &Login::new("vic", "t"));
    let (status, list) = post(
        server.http_addr(),
        "/user/onlinestatus",
        json!(["vic", "nobody"]),
    );
    assert_eq!(status, 200);
    assert_eq!(list, json!([{"uid": "vic", "device_flag": 1, "online": 1}]));
    let (status, _) = post(
        server.http_addr(),
        "/user/device_quit",
        json!({"uid": "vic", "device_flag": -1}),
    );
    assert_eq!(status, 200);
    match vic.read_packet(Duration::from_secs(5)) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, reason::CONNECT_KICK),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(vic.closed_within(Duration::from_secs(5)));
    let (_, ack) = Client::login(server.tcp_addr(), &Login::new("vic", "t"));
    assert_eq!(ack.reason_code, reason::AUTH_FAIL, "the token was cleared");
}

#[test]
fn removed_subscribers_cannot_send_and_deleted_channels_are_gone() {
    let server = start("remove", |_| {});
    let http = server.http_addr();
    register(&server, "wes", "t", 1, 0);
    post(
        http,
        "/channel",
        json!({"channel_id": "club", "channel_type": 2, "subscribers": ["wes", "zoe"]}),
    );
    let mut wes = Client::ok(server.tcp_addr(), &Login::new("wes", "t"));
    wes.send("club", 2, b"{}", "c1");
    assert_eq!(wes.sendack().reason_code, reason::SUCCESS);
    let (status, _) = post(
        http,
        "/channel/subscriber_remove",
        json!({"channel_id": "club", "channel_type": 2, "subscribers": ["wes"]}),
    );
    assert_eq!(status, 200);
    wes.send("club", 2, b"{}", "c2");
    assert_eq!(wes.sendack().reason_code, reason::SUBSCRIBER_NOT_EXIST);
    let (status, _) = post(
        http,
        "/channel/delete",
        json!({"channel_id": "club", "channel_type": 2}),
    );
    assert_eq!(status, 200);
    let (_, v) = post(
        http,
        "/message/send",
        json!({"channel_id": "club", "channel_type": 2, "payload": b64("{}")}),
    );
    assert_eq!(
        v["status"],
        reason::DISBAND,
        "a deleted channel is disbanded"
    );
    let (_, v) = post(
        http,
        "/channel/messagesync",
        json!({"login_uid": "zoe", "channel_id": "club", "channel_type": 2, "limit": 10}),
    );
    assert_eq!(
        v["messages"].as_array().unwrap().len(),
        0,
        "its messages are gone"
    );
    let (status, _) = post(
        http,
        "/channel/delete",
        json!({"channel_id": "bob", "channel_type": 1}),
    );
    assert_eq!(status, 400, "person channels cannot be deleted");
}

#[test]
fn varz_metrics_and_route_describe_the_server() {
    let server = start("varz", |_| {});
    register(&server, "u", "t", 1, 0);
    let _c = Client::ok(server.tcp_addr(), &Login::new("u", "t"));
    let (status, v) = http(server.http_addr(), "GET", "/varz", &Value::Null);
    assert_eq!(status, 200);
    assert_eq!(v["ruyi_online_users"], 1);
    assert!(v["connections"].as_u64().unwrap() >= 1);
    let (status, v) = http(server.http_addr(), "GET", "/v1/route?uid=u", &Value::Null);
    assert_eq!(status, 200);
    assert!(v["ws_addr"].as_str().unwrap().starts_with("ws://"));
    // /metrics is text, not JSON: read it raw.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http_addr()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"));
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(text.contains("# TYPE ruyi_connections gauge"));
    assert!(text.contains("ruyi_online_users_connections 1"));
    let (status, _) = http(server.http_addr(), "POST", "/varz", &json!({}));
    assert_eq!(status, 405);
}

#[test]
fn sendbatch_sends_one_person_message_to_each() {
    let server = start("batch", |_| {});
    let (status, v) = post(
        server.http_addr(),
        "/message/sendbatch",
        json!({"from_uid": "sys", "subscribers": ["r1", "r2", "r3"], "payload": b64("{\"type\":1}")}),
    );
    assert_eq!((status, &v), (200, &json!({"fail_uids": [], "reason": []})));
    for uid in ["r1", "r2", "r3"] {
        let (_, list) = post(
            server.http_addr(),
            "/message/sync",
            json!({"uid": uid, "limit": 10}),
        );
        assert_eq!(list.as_array().unwrap().len(), 1, "{uid}");
        assert_eq!(list[0]["channel_id"], "sys");
    }
    let (status, _) = post(
        server.http_addr(),
        "/message/sendbatch",
        json!({"from_uid": "sys", "payload": b64("x")}),
    );
    assert_eq!(status, 400);
}

#[test]
fn conversation_sync_lists_recent_chats_with_unread_counts() {
    let server = start("convs", |_| {});
    let http = server.http_addr();
    register(&server, "kai", "t", 1, 0);
    register(&server, "lu", "t", 1, 0);
    post(
        http,
        "/channel",
        json!({"channel_id": "team", "channel_type": 2, "subscribers": ["kai", "lu"]}),
    );
    let mut kai = Client::ok(server.tcp_addr(), &Login::new("kai", "t"));
    for i in 0..3 {
        kai.send(
            "lu",
            1,
            format!("{{\"n\":{i}}}").as_bytes(),
            &format!("d{i}"),
        );
        kai.sendack();
    }
    kai.send("team", 2, b"{}", "t1");
    kai.sendack();
    let (status, v) = post(
        http,
        "/conversation/sync",
        json!({"uid": "lu", "msg_count": 2}),
    );
    assert_eq!(status, 200);
    let convs = v.as_array().unwrap();
    assert_eq!(convs.len(), 2, "{v}");
    let person = convs.iter().find(|c| c["channel_type"] == 1).unwrap();
    assert_eq!(
        (
            &person["channel_id"],
            &person["unread"],
            &person["last_msg_seq"]
        ),
        (&json!("kai"), &json!(3), &json!(3))
    );
    let recents = person["recents"].as_array().unwrap();
    assert_eq!(recents.len(), 2);
    assert_eq!(recents[0]["message_seq"], 3, "newest first");
    let group = convs.iter().find(|c| c["channel_type"] == 2).unwrap();
    assert_eq!(
        (&group["channel_id"], &group["unread"]),
        (&json!("team"), &json!(1))
    );
    // The sender sees its own messages as read.
    let (_, v) = post(
        http,
        "/conversation/sync",
        json!({"uid": "kai", "msg_count": 1}),
    );
    assert!(
        v.as_array().unwrap().iter().all(|c| c["unread"] == 0),
        "{v}"
    );
    // clearUnread, then only_unread hides the person chat; delete hides it for good.
    assert_eq!(
        post(
            http,
            "/conversations/clearUnread",
            json!({"uid": "lu", "channel_id": "kai", "channel_type": 1})
        )
        .0,
        200
    );
    let (_, v) = post(
        http,
        "/conversation/sync",
        json!({"uid": "lu", "msg_count": 1, "only_unread": 1}),
    );
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|c| c["channel_id"] != "kai"),
        "{v}"
    );
    assert_eq!(
        post(
            http,
            "/conversations/delete",
            json!({"uid": "lu", "channel_id": "team", "channel_type": 2})
        )
        .0,
        200
    );
    let (_, v) = post(
        http,
        "/conversation/sync",
        json!({"uid": "lu", "msg_count": 1}),
    );
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|c| c["channel_id"] != "team"),
        "{v}"
    );
}

#[test]
fn a_send_to_a_subscriber_list_is_a_command_message_for_exactly_those_users() {
    let server = start("tempsend", |_| {});
    let http = server.http_addr();
    register(&server, "on", "t", 1, 0);
    let mut on = Client::ok(server.tcp_addr(), &Login::new("on", "t"));
    let body = json!({"header": {"sync_once": 1}, "from_uid": "app", "subscribers": ["on", "off"], "payload": b64("{\"cmd\":1}")});
    let (status, v) = post(http, "/message/send", body);
    assert_eq!((status, &v), (200, &json!({"status": 200})));
    let r = on.recv();
    assert!(r.flags.sync_once());
    assert_eq!(r.channel_type, 8, "a Temp channel");
    assert_eq!(
        r.message_seq, 1,
        "SyncOnce RECVs carry the user's queue seq"
    );
    let (_, list) = post(http, "/message/sync", json!({"uid": "off", "limit": 10}));
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "queued for the offline member"
    );
    let (status, _) = post(
        http,
        "/message/send",
        json!({"subscribers": ["a"], "payload": b64("x")}),
    );
    assert_eq!(status, 400, "sync_once is required");
    let (status, _) = post(
        http,
        "/message/send",
        json!({"header": {"sync_once": 1}, "channel_id": "g", "channel_type": 2, "subscribers": ["a"], "payload": b64("x")}),
    );
    assert_eq!(status, 400, "not both");
}

#[test]
fn every_route_answers_bad_input_with_a_json_400() {
    let server = start("badinput", |_| {});
    let http = server.http_addr();
    let posts = [
        "/user/token",
        "/user/device_quit",
        "/user/onlinestatus",
        "/channel",
        "/channel/info",
        "/channel/delete",
        "/channel/subscriber_add",
        "/channel/subscriber_remove",
        "/channel/blacklist_add",
        "/channel/blacklist_set",
        "/channel/blacklist_remove",
        "/channel/blacklist_remove_all",
        "/channel/whitelist_add",
        "/channel/whitelist_set",
        "/channel/whitelist_remove",
        "/channel/whitelist_remove_all",
        "/channel/messagesync",
        "/message/send",
        "/message/sendbatch",
        "/message/sync",
        "/message/syncack",
        "/conversation/sync",
        "/conversations/clearUnread",
        "/conversations/setUnread",
        "/conversations/delete",
        "/channel/subscriber_remove_all",
        "/messages",
        "/message",
        "/route/batch",
    ];
    use std::io::{Read, Write};
    for path in posts {
        for (name, body) in [("empty object", "{}"), ("not JSON", "not json{")] {
            // `{}` is a valid (empty) request only where nothing is required: none here.
            let mut s = std::net::TcpStream::connect(http).unwrap();
            write!(
                s,
                "POST /v1{path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            assert!(out.starts_with("HTTP/1.1 400"), "{path} with {name}: {out}");
            let json: Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            assert_eq!(json["status"], 400, "{path} with {name}");
            assert!(
                json["msg"].as_str().is_some_and(|m| !m.is_empty()),
                "{path}: a message says why"
            );
        }
    }
    for path in ["/channel/max_message_seq", "/channel/whitelist"] {
        let (status, v) = http_get(http, path);
        assert_eq!((status, v["status"].as_u64()), (400, Some(400)), "{path}");
    }
}

#[test]
fn a_deleted_channel_never_reuses_a_seq_even_after_a_restart() {
    init();
    let dir = temp_dir("noreuse");
    let send = |server: &ruyi::Server| {
        let (_, v) = post(
            server.http_addr(),
            "/message/send",
            json!({"channel_id": "gone", "channel_type": 2, "payload": b64("{}")}),
        );
        v["data"]["message_seq"].as_u64().unwrap()
    };
    let config = test_config_in(&dir);
    let server = ruyi::Server::start(config.clone()).unwrap();
    post(
        server.http_addr(),
        "/channel",
        json!({"channel_id": "gone", "channel_type": 2, "subscribers": ["a"]}),
    );
    assert_eq!((send(&server), send(&server)), (1, 2));
    assert_eq!(
        post(
            server.http_addr(),
            "/channel/delete",
            json!({"channel_id": "gone", "channel_type": 2})
        )
        .0,
        200
    );
    post(
        server.http_addr(),
        "/channel",
        json!({"channel_id": "gone", "channel_type": 2, "subscribers": ["a"]}),
    );
    assert_eq!(send(&server), 3, "the writer's numbers carry on");
    server.stop();
    let server = ruyi::Server::start(config).unwrap();
    assert_eq!(send(&server), 4, "and survive a restart");
}

#[test]
fn an_api_command_message_goes_to_the_cmd_channel_not_the_history() {
    let server = start("cmdchan", |_| {});
    let http = server.http_addr();
    register(&server, "on", "t", 1, 0);
    post(
        http,
        "/channel",
        json!({"channel_id": "room", "channel_type": 2, "subscribers": ["on", "off"]}),
    );
    let mut on = Client::ok(server.tcp_addr(), &Login::new("on", "t"));
    let (status, v) = post(
        http,
        "/message/send",
        json!({"header": {"sync_once": 1}, "channel_id": "room", "channel_type": 2, "payload": b64("{\"cmd\":2}")}),
    );
    assert_eq!(status, 200, "{v}");
    let r = on.recv();
    assert!(r.flags.sync_once());
    assert_eq!(
        r.channel_id, "room",
        "receivers see the channel, not room____cmd"
    );
    let (_, h) = post(
        http,
        "/channel/messagesync",
        json!({"login_uid": "on", "channel_id": "room", "channel_type": 2, "limit": 10}),
    );
    assert_eq!(
        h["messages"].as_array().unwrap().len(),
        0,
        "not in the channel's history"
    );
    let (_, q) = post(http, "/message/sync", json!({"uid": "off", "limit": 10}));
    assert_eq!(q[0]["channel_id"], "room");
    assert_eq!(q[0]["header"]["sync_once"], 1);
}

#[test]
fn messages_can_be_fetched_by_seq_id_and_client_msg_no() {
    let server = start("fetch", |_| {});
    let http = server.http_addr();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, v) = post(
            http,
            "/message/send",
            json!({"channel_id": "ux", "channel_type": 1, "from_uid": "uy", "client_msg_no": format!("c{i}"), "payload": b64("{}")}),
        );
        ids.push(v["data"]["message_id"].as_i64().unwrap());
    }
    let (status, v) = post(
        http,
        "/messages",
        json!({"login_uid": "ux", "channel_id": "uy", "channel_type": 1, "message_seqs": [3, 9], "message_ids": [ids[0]], "client_msg_nos": ["c1"]}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        seqs(&v),
        [3, 1, 2],
        "in the order asked, missing keys skipped"
    );
    assert_eq!(
        v["messages"][0]["channel_id"], "uy",
        "the peer of the caller"
    );
    let (_, m) = post(
        http,
        "/message",
        json!({"login_uid": "ux", "channel_id": "uy", "channel_type": 1, "client_msg_no": "c2"}),
    );
    assert_eq!(m["message_id"], ids[2]);
    let (_, m) = post(
        http,
        "/message",
        json!({"login_uid": "ux", "channel_id": "uy", "channel_type": 1, "message_id": 12345}),
    );
    assert_eq!(m, json!({"status": 404}));
    let (status, r) = post(http, "/route/batch", json!(["a", "b"]));
    assert_eq!((status, &r[0]["uids"]), (200, &json!(["a", "b"])));
    post(
        http,
        "/channel",
        json!({"channel_id": "all", "channel_type": 2, "subscribers": ["a", "b"]}),
    );
    assert_eq!(
        post(
            http,
            "/channel/subscriber_remove_all",
            json!({"channel_id": "all", "channel_type": 2})
        )
        .0,
        200
    );
    let (_, v) = post(
        http,
        "/message/send",
        json!({"channel_id": "all", "channel_type": 2, "from_uid": "a", "payload": b64("{}")}),
    );
    assert_eq!(
        v["status"], 200,
        "system-device sends skip membership checks"
    );
}
