//! What an app server written for WuKongIM meets beyond the happy path (issue 18), each
//! against HTTP_API.md: zero seqs for unused channels, advertised addresses, JSON nulls,
//! re-created channels, the conversation list's choices, HTTP/1.1 framing, 64-bit seqs,
//! generated client_msg_nos, `/varz` counts and the optional routes.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type::GROUP, channel_type::PERSON, reason};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use util::*;

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, text) = http_text(addr, path);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn send(http: SocketAddr, from: &str, to: &str, ctype: u8, no: &str) -> u64 {
    let (status, v) = post(
        http,
        "/message/send",
        json!({"from_uid": from, "channel_id": to, "channel_type": ctype,
               "client_msg_no": no, "payload": "e30="}),
    );
    assert_eq!(status, 200, "{v}");
    v["data"]["message_seq"].as_u64().unwrap()
}

#[test]
fn max_message_seq_is_zero_for_unused_channels_and_person_ids_in_either_order() {
    let server = start("conf-maxseq", |_| {});
    let http = server.http_addr();
    for path in [
        "/channel/max_message_seq?channel_id=never&channel_type=2",
        "/channel/max_message_seq?channel_id=u2&channel_type=1&login_uid=u1",
        "/channel/max_message_seq?channel_id=u1@u2&channel_type=1",
    ] {
        assert_eq!(get(http, path), (200, json!({"message_seq": 0})), "{path}");
    }
    send(http, "u1", "u2", PERSON, "m1");
    send(http, "u2", "u1", PERSON, "m2");
    for path in [
        "/channel/max_message_seq?channel_id=u2&channel_type=1&login_uid=u1",
        "/channel/max_message_seq?channel_id=u1@u2&channel_type=1",
        "/channel/max_message_seq?channel_id=u2@u1&channel_type=1",
    ] {
        assert_eq!(get(http, path), (200, json!({"message_seq": 2})), "{path}");
    }
    let (status, _) = get(
        http,
        "/channel/max_message_seq?channel_id=u2&channel_type=1",
    );
    assert_eq!(status, 400, "a person id without login_uid");
}

#[test]
fn route_never_answers_a_wildcard_address() {
    let wildcard = |c: &mut ruyi::Config| {
        c.tcp_addr = "0.0.0.0:0".parse().unwrap();
        c.ws_addr = "0.0.0.0:0".parse().unwrap();
    };
    let server = start("conf-route", wildcard);
    let (status, v) = get(server.http_addr(), "/route?uid=a");
    assert_eq!(status, 200);
    for field in ["tcp_addr", "ws_addr"] {
        let addr = v[field].as_str().unwrap();
        assert!(!addr.contains("0.0.0.0"), "{field} = {addr}");
    }
    assert!(v["ws_addr"].as_str().unwrap().starts_with("ws://"));
    let port = server.tcp_addr().port();
    assert!(v["tcp_addr"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{port}")));

    // WuKongIM's external settings win, on every route that names addresses.
    let server = start("conf-route-ext", |c| {
        wildcard(c);
        c.external_ip = Some("203.0.113.7".into());
        c.external_wss_addr = Some("wss://im.example.com:443".into());
    });
    let (tcp, ws) = (server.tcp_addr().port(), server.ws_addr().port());
    let want = json!({"tcp_addr": format!("203.0.113.7:{tcp}"),
        "ws_addr": format!("ws://203.0.113.7:{ws}"), "wss_addr": "wss://im.example.com:443"});
    assert_eq!(get(server.http_addr(), "/route?uid=a"), (200, want.clone()));
    assert_eq!(
        get(server.http_addr(), "/route?uid=a&intranet=1"),
        (200, json!({"tcp_addr": want["tcp_addr"]}))
    );
    let (_, batch) = post(server.http_addr(), "/route/batch", json!(["a", "b"]));
    assert_eq!(batch[0]["tcp_addr"], want["tcp_addr"]);
    assert_eq!(batch[0]["uids"], json!(["a", "b"]));
    let (_, varz) = get(server.http_addr(), "/varz");
    assert_eq!(varz["ws_addr"], want["ws_addr"]);

    let server = start("conf-route-full", |c| {
        c.external_tcp_addr = Some("im.example.com:5100".into());
        c.external_ws_addr = Some("ws://im.example.com:5200".into());
    });
    let (_, v) = get(server.http_addr(), "/route");
    assert_eq!(
        (v["tcp_addr"].as_str(), v["ws_addr"].as_str()),
        (
            Some("im.example.com:5100"),
            Some("ws://im.example.com:5200")
        )
    );
    let mut bad = ruyi::Config::for_test(temp_dir("conf-route-bad"));
    bad.external_ws_addr = Some("im.example.com:5200".into());
    assert!(bad.validate().is_err(), "a ws address without ws://");
    for (ip, tcp) in [(Some("0.0.0.0"), None), (None, Some("[::]:5100"))] {
        let mut bad = ruyi::Config::for_test(temp_dir("conf-route-bad"));
        bad.external_ip = ip.map(Into::into);
        bad.external_tcp_addr = tcp.map(Into::into);
        assert!(
            bad.validate().is_err(),
            "a wildcard advertised: {ip:?} {tcp:?}"
        );
    }
}

#[test]
fn json_null_is_the_zero_value_on_every_route() {
    let server = start("conf-null", |_| {});
    let http = server.http_addr();
    let (status, v) = post(
        http,
        "/channel",
        json!({"channel_id": "g", "channel_type": GROUP, "ban": null, "large": null,
               "subscribers": ["a", "b"], "reset": null}),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(
        http,
        "/message/send",
        json!({"header": null, "from_uid": "a", "channel_id": "g", "channel_type": GROUP,
               "client_msg_no": null, "stream_no": null, "expire": null, "payload": "e30=",
               "subscribers": null}),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(
        http,
        "/channel/messagesync",
        json!({"login_uid": "a", "channel_id": "g", "channel_type": GROUP,
               "start_message_seq": null, "end_message_seq": null, "limit": null,
               "pull_mode": null}),
    );
    assert_eq!(status, 200, "{v}");
    // A null where a value is required is a missing value: 400 with the reason.
    let (status, v) = post(http, "/user/token", json!({"uid": null, "token": "t"}));
    assert_eq!(status, 400, "{v}");
    assert!(v["msg"].is_string());
}

#[test]
fn a_deleted_channel_created_again_is_fresh_and_keeps_its_seqs_going() {
    let server = start("conf-recreate", |_| {});
    let http = server.http_addr();
    let body = json!({"channel_id": "g", "channel_type": GROUP, "subscribers": ["a"]});
    assert_eq!(post(http, "/channel/subscriber_add", body.clone()).0, 200);
    let before = send(http, "a", "g", GROUP, "g1");
    assert_eq!(
        post(
            http,
            "/channel/delete",
            json!({"channel_id": "g", "channel_type": GROUP})
        )
        .0,
        200
    );
    register(&server, "a", "t", 1, 0);
    let mut a = Client::ok(server.tcp_addr(), &Login::new("a", "t"));
    a.send("g", GROUP, b"{}", "after-delete");
    assert_eq!(
        a.sendack().reason_code,
        reason::DISBAND,
        "a deleted channel"
    );
    // subscriber_add creates a missing channel: here, the deleted one again.
    assert_eq!(post(http, "/channel/subscriber_add", body).0, 200);
    a.send("g", GROUP, b"{}", "recreated");
    let ack = a.sendack();
    assert_eq!(ack.reason_code, reason::SUCCESS, "the re-created channel");
    assert!(u64::from(ack.message_seq) > before, "a seq was reused");
}

#[test]
fn conversation_sync_keeps_the_newest_activity_honours_msg_count_and_own_reads() {
    let server = start("conf-convs", |_| {});
    let http = server.http_addr();
    // 1,001 conversations: the oldest gets new activity last and must be listed.
    for i in 0..1001 {
        send(http, &format!("p{i}"), "u", PERSON, &format!("c{i}"));
    }
    send(http, "p0", "u", PERSON, "c0-again");
    let (status, list) = post(
        http,
        "/conversation/sync",
        json!({"uid": "u", "msg_count": 1}),
    );
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1000, "the documented cap");
    assert_eq!(
        list[0]["channel_id"], "p0",
        "the newest activity comes first"
    );

    // msg_count above 100 is honoured.
    for i in 0..150 {
        send(http, "v", "w", PERSON, &format!("many-{i}"));
    }
    let (_, list) = post(
        http,
        "/conversation/sync",
        json!({"uid": "w", "msg_count": 150}),
    );
    assert_eq!(list[0]["recents"].as_array().unwrap().len(), 150);

    // only_unread: the user's own latest message read everything before it.
    for i in 0..3 {
        send(http, "x", "y", PERSON, &format!("x-{i}"));
    }
    send(http, "y", "x", PERSON, "y-reply");
    for i in 3..5 {
        send(http, "x", "y", PERSON, &format!("x-{i}"));
    }
    let (_, list) = post(
        http,
        "/conversation/sync",
        json!({"uid": "y", "msg_count": 10, "only_unread": 1}),
    );
    let recents: Vec<&str> = list[0]["recents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_msg_no"].as_str().unwrap())
        .collect();
    assert_eq!(
        recents,
        ["x-4", "x-3"],
        "newest first, after y's own message"
    );
    assert_eq!(list[0]["unread"], 2);
}

/// Writes `head`, then (after `wait_continue`, the interim response) `body`; returns the
/// final status line and everything read.
fn exchange_raw(addr: SocketAddr, head: &str, body: &[u8], wait_continue: bool) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    if !wait_continue {
        // One write: a refusal then finds nothing unread, and its answer is not lost to a
        // reset.
        s.write_all(&[head.as_bytes(), body].concat()).unwrap();
        let _ = s.read_to_end(&mut got);
        return String::from_utf8_lossy(&got).into_owned();
    }
    s.write_all(head.as_bytes()).unwrap();
    {
        let mut buf = [0u8; 64];
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).expect("100 Continue before the body");
            assert!(n > 0, "closed before 100 Continue");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    s.write_all(body).unwrap();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn expect_100_continue_and_chunked_bodies_are_understood() {
    let server = start("conf-http11", |_| {});
    let http = server.http_addr();
    let body = r#"{"uid":"c1","token":"t","device_flag":1}"#;
    let head = format!(
        "POST /user/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let out = exchange_raw(http, &head, body.as_bytes(), true);
    assert!(out.contains("HTTP/1.1 200"), "{out}");

    let chunked = |body: &str| {
        let mut out = String::new();
        for piece in body.as_bytes().chunks(7) {
            out.push_str(&format!("{:x};ext=1\r\n", piece.len()));
            out.push_str(std::str::from_utf8(piece).unwrap());
            out.push_str("\r\n");
        }
        out + "0\r\nX-Trailer: yes\r\n\r\n"
    };
    let head = "POST /user/token HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let out = exchange_raw(http, head, chunked(body).as_bytes(), false);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    for (head, body, status) in [
        // Both framings: refused (a desync vector).
        (
            "POST /user/token HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "0\r\n\r\n".to_owned(),
            "400",
        ),
        // A chunk whose data is not followed by CRLF.
        (
            head,
            "5\r\nabcdefg\r\n0\r\n\r\n".to_owned(),
            "400",
        ),
        // Over the body limit.
        (
            head,
            format!("{:x}\r\n", 2 << 20),
            "413",
        ),
        (
            "POST /user/token HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            String::new(),
            "501",
        ),
        (
            "POST /user/token HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: something-else\r\nContent-Length: 2\r\n\r\n",
            "{}".to_owned(),
            "417",
        ),
        // Smuggling shapes: a bare LF ends a size line for some proxies.
        (head, "1;\nX\r\nA\r\n0\r\n\r\n".to_owned(), "400"),
        // HTTP/1.0 has no chunked coding.
        (
            "POST /user/token HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "0\r\n\r\n".to_owned(),
            "400",
        ),
        // What needs no token takes no body.
        (
            "OPTIONS / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "1;aaaa".to_owned(),
            "400",
        ),
    ] {
        let out = exchange_raw(http, head, body.as_bytes(), false);
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{head:?}: {out}");
    }
}

#[test]
fn sixty_four_bit_seqs_are_accepted_and_clamped() {
    let server = start("conf-seq64", |_| {});
    let http = server.http_addr();
    send(http, "a", "b", PERSON, "one");
    let (status, v) = post(
        http,
        "/channel/messagesync",
        json!({"login_uid": "a", "channel_id": "b", "channel_type": PERSON,
               "start_message_seq": 5_000_000_000u64, "end_message_seq": 0, "limit": 10}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["start_message_seq"], 5_000_000_000u64);
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    let (status, v) = post(
        http,
        "/messages",
        json!({"login_uid": "a", "channel_id": "b", "channel_type": PERSON,
               "message_seqs": [1, 5_000_000_000u64]}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn generated_client_msg_nos_are_uuids_and_varz_counts_client_connections() {
    let server = start("conf-small", |_| {});
    let http = server.http_addr();
    let (status, v) = post(
        http,
        "/message/send",
        json!({"from_uid": "a", "channel_id": "b", "channel_type": PERSON, "payload": "e30="}),
    );
    assert_eq!(status, 200, "{v}");
    let history = post(
        http,
        "/channel/messagesync",
        json!({"login_uid": "a", "channel_id": "b", "channel_type": PERSON, "limit": 1}),
    )
    .1;
    let no = history["messages"][0]["client_msg_no"].as_str().unwrap();
    assert_eq!(no.len(), 33, "{no}");
    assert!(
        no.ends_with('0') && no.bytes().all(|b| b.is_ascii_hexdigit()),
        "{no}"
    );
    assert_eq!(&no[12..13], "4", "a version-4 UUID: {no}");

    assert_eq!(get(http, "/varz").1["connections"], 0, "the asking request");
    register(&server, "a", "t", 1, 0);
    let _a = Client::ok(server.tcp_addr(), &Login::new("a", "t"));
    assert_eq!(get(http, "/varz").1["connections"], 1);
}

#[test]
fn system_uids_skip_checks_and_get_no_pushes() {
    let server = start("conf-sysuids", |_| {});
    let http = server.http_addr();
    assert_eq!(get(http, "/user/systemuids"), (200, json!([])));
    let add = json!({"uids": ["bot", "notifier"]});
    assert_eq!(post(http, "/user/systemuids_add", add).0, 200);
    assert_eq!(
        get(http, "/user/systemuids"),
        (200, json!(["bot", "notifier"]))
    );
    let group = json!({"channel_id": "g", "channel_type": GROUP, "subscribers": ["m"]});
    assert_eq!(post(http, "/channel", group).0, 200);
    for uid in ["bot", "m", "outsider"] {
        register(&server, uid, "t", 1, 0);
    }
    // The bot is not a member, yet may send; an outsider may not.
    let mut m = Client::ok(server.tcp_addr(), &Login::new("m", "t"));
    let mut bot = Client::ok(server.tcp_addr(), &Login::new("bot", "t"));
    bot.send("g", GROUP, b"{}", "from-bot");
    assert_eq!(bot.sendack().reason_code, reason::SUCCESS);
    let mut outsider = Client::ok(server.tcp_addr(), &Login::new("outsider", "t"));
    outsider.send("g", GROUP, b"{}", "from-outsider");
    assert_eq!(outsider.sendack().reason_code, reason::SUBSCRIBER_NOT_EXIST);
    // Messages to the bot are stored but never pushed to it.
    assert_eq!(m.recv().client_msg_no, "from-bot");
    m.send("bot", PERSON, b"{}", "to-bot");
    assert_eq!(m.sendack().reason_code, reason::SUCCESS);
    assert!(
        bot.quiet_for(Duration::from_millis(500)),
        "pushed to a system uid"
    );
    let remove = json!({"uids": ["bot"]});
    assert_eq!(post(http, "/user/systemuids_remove", remove).0, 200);
    assert_eq!(get(http, "/user/systemuids"), (200, json!(["notifier"])));
    bot.send("g", GROUP, b"{}", "bot-again");
    assert_eq!(bot.sendack().reason_code, reason::SUBSCRIBER_NOT_EXIST);
    assert_eq!(
        post(http, "/user/systemuids_add", json!({"uids": []})).0,
        400
    );
}

#[test]
fn last_message_and_sync_messages_answer_per_channel() {
    let server = start("conf-recent", |_| {});
    let http = server.http_addr();
    let (status, v) = get(
        http,
        "/channel/last_message?login_uid=a&channel_id=b&channel_type=1",
    );
    assert_eq!((status, v), (200, json!({"status": 404})));
    for i in 1..=5 {
        send(http, "a", "b", PERSON, &format!("ab-{i}"));
    }
    send(http, "b", "a", PERSON, "ba-6");
    let (status, v) = get(
        http,
        "/channel/last_message?login_uid=a&channel_id=b&channel_type=1",
    );
    assert_eq!(status, 200);
    assert_eq!(v["client_msg_no"], "ba-6");

    let (status, v) = post(
        http,
        "/conversation/syncMessages",
        json!({"uid": "a", "msg_count": 3, "order_by_last": 1,
               "channels": [{"channel_id": "b", "channel_type": PERSON, "last_msg_seq": 2},
                            {"channel_id": "nobody", "channel_type": GROUP, "last_msg_seq": 0}]}),
    );
    assert_eq!(status, 200, "{v}");
    let nos: Vec<&str> = v[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_msg_no"].as_str().unwrap())
        .collect();
    assert_eq!(nos, ["ba-6", "ab-5", "ab-4"]);
    assert_eq!(v[0]["user_last_msg_seq"], 5, "a's newest own message");
    assert_eq!(v[1]["messages"], json!([]));
}

#[test]
fn sync_messages_stays_within_its_budget_and_reads_a_channel_once() {
    let server = start("conf-recent-budget", |_| {});
    let http = server.http_addr();
    let payload = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(vec![b'p'; 1024])
    };
    for g in 0..3 {
        let group =
            json!({"channel_id": format!("big{g}"), "channel_type": GROUP, "subscribers": ["a"]});
        assert_eq!(post(http, "/channel", group).0, 200);
        for i in 0..1000 {
            let (status, v) = post(
                http,
                "/message/send",
                json!({"from_uid": "a", "channel_id": format!("big{g}"), "channel_type": GROUP,
                       "client_msg_no": format!("b{g}-{i}"), "payload": payload}),
            );
            assert_eq!(status, 200, "{v}");
        }
    }
    let mut channels: Vec<Value> = (0..3)
        .map(|g| json!({"channel_id": format!("big{g}"), "channel_type": GROUP, "last_msg_seq": 0}))
        .collect();
    // The same channel named over and over.
    channels.extend(vec![channels[0].clone(); 500]);
    let body = json!({"uid": "a", "msg_count": 1000, "channels": channels});
    let (status, v) = post(http, "/conversation/syncMessages", body);
    let text = v.to_string();
    assert_eq!(status, 200);
    assert!(
        text.len() < 3 << 20,
        "{} bytes answered for 3,000 KiB-sized messages",
        text.len()
    );
    let counts: Vec<usize> = (0..3)
        .map(|i| v[i]["messages"].as_array().unwrap().len())
        .collect();
    let total: usize = counts.iter().sum();
    assert!(
        counts[0] > 0 && total < 3000,
        "the budget did not cut: {counts:?}"
    );
    assert_eq!(
        v[3]["messages"],
        json!([]),
        "a channel named twice was read twice"
    );
}

#[test]
fn a_system_uid_recipient_accepts_even_from_a_user_it_blacklisted() {
    let server = start("conf-sys-recipient", |_| {});
    let http = server.http_addr();
    let deny = json!({"channel_id": "bot", "channel_type": PERSON, "uids": ["u"]});
    assert_eq!(post(http, "/channel/blacklist_add", deny).0, 200);
    register(&server, "u", "t", 1, 0);
    let mut u = Client::ok(server.tcp_addr(), &Login::new("u", "t"));
    u.send("bot", PERSON, b"{}", "denied");
    assert_eq!(u.sendack().reason_code, reason::IN_BLACKLIST);
    assert_eq!(
        post(http, "/user/systemuids_add", json!({"uids": ["bot"]})).0,
        200
    );
    u.send("bot", PERSON, b"{}", "accepted");
    assert_eq!(u.sendack().reason_code, reason::SUCCESS);
}

#[test]
fn last_msg_seqs_past_32_bits_mean_the_client_has_everything() {
    let server = start("conf-lastseqs", |_| {});
    let http = server.http_addr();
    send(http, "a", "b", PERSON, "one");
    let (_, list) = post(
        http,
        "/conversation/sync",
        json!({"uid": "a", "msg_count": 5, "last_msg_seqs": "b:1:5000000000"}),
    );
    assert_eq!(
        list,
        json!([]),
        "a seq past 32 bits was ignored, not clamped"
    );
}
