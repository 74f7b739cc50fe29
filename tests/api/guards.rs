//! Who may call the API, and what it refuses: the manager token, the loopback rule, CORS,
//! the probes, and the channel blacklists and whitelists.

use super::*;

#[test]
fn a_manager_token_guards_every_route() {
    let server = start("manager", |c| c.manager_token = Some("s3cret".into()));
    // Every route but the probes (`probes_need_no_manager_token_and_ready_says_ok`).
    let (status, body) = http(server.http_addr(), "GET", "/varz", &Value::Null);
    assert_eq!(
        (status, body),
        (401, Value::Null),
        "no token: 401, empty body"
    );
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http_addr()).unwrap();
    s.write_all(b"GET /varz HTTP/1.1\r\ntoken: s3cret\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn an_api_beyond_loopback_without_a_manager_token_does_not_start() {
    init();
    let mut config = ruyi::Config::for_test(temp_dir("exposed"));
    config.http_addr = "0.0.0.0:0".parse().unwrap();
    let err = ruyi::Server::start(config).unwrap_err();
    assert!(err.to_string().contains("manager token"), "{err}");
}

#[test]
fn blacklists_and_whitelists_refuse_with_their_codes() {
    let server = start("lists", |_| {});
    let http = server.http_addr();
    for uid in ["ann", "bo", "cy"] {
        register(&server, uid, "t", 1, 0);
    }
    post(
        http,
        "/channel",
        json!({"channel_id": "grp", "channel_type": 2, "subscribers": ["ann", "bo", "cy"]}),
    );
    let mut ann = Client::ok(server.tcp_addr(), &Login::new("ann", "t"));
    let mut bo = Client::ok(server.tcp_addr(), &Login::new("bo", "t"));
    // Person blacklist: bo blocks ann.
    assert_eq!(
        post(
            http,
            "/channel/blacklist_add",
            json!({"channel_id": "bo", "channel_type": 1, "uids": ["ann"]})
        )
        .0,
        200
    );
    ann.send("bo", 1, b"{}", "p1");
    assert_eq!(ann.sendack().reason_code, reason::IN_BLACKLIST);
    bo.send("ann", 1, b"{}", "p2");
    assert_eq!(
        bo.sendack().reason_code,
        reason::SUCCESS,
        "the owner can still write"
    );
    assert_eq!(ann.recv().channel_id, "bo");
    assert_eq!(
        post(
            http,
            "/channel/blacklist_remove",
            json!({"channel_id": "bo", "channel_type": 1, "uids": ["ann"]})
        )
        .0,
        200
    );
    ann.send("bo", 1, b"{}", "p3");
    assert_eq!(ann.sendack().reason_code, reason::SUCCESS);
    bo.recv();
    // Group whitelist: once non-empty, only listed members may send.
    assert_eq!(
        post(
            http,
            "/channel/whitelist_set",
            json!({"channel_id": "grp", "channel_type": 2, "uids": ["bo"]})
        )
        .0,
        200
    );
    ann.send("grp", 2, b"{}", "g1");
    assert_eq!(ann.sendack().reason_code, reason::NOT_IN_WHITELIST);
    let (_, list) = http_get(http, "/channel/whitelist?channel_id=grp&channel_type=2");
    assert_eq!(list, json!([{"uid": "bo", "id": "bo"}]));
    assert_eq!(
        post(
            http,
            "/channel/whitelist_remove_all",
            json!({"channel_id": "grp", "channel_type": 2})
        )
        .0,
        200
    );
    // Group blacklist.
    assert_eq!(
        post(
            http,
            "/channel/blacklist_set",
            json!({"channel_id": "grp", "channel_type": 2, "uids": ["ann"]})
        )
        .0,
        200
    );
    ann.send("grp", 2, b"{}", "g2");
    assert_eq!(ann.sendack().reason_code, reason::IN_BLACKLIST);
    assert_eq!(
        post(
            http,
            "/channel/blacklist_add",
            json!({"channel_id": "grp", "channel_type": 2, "uids": []})
        )
        .0,
        400
    );
}

#[test]
fn cors_preflights_from_a_listed_origin_are_answered_even_with_a_manager_token() {
    let server = start("cors", |c| {
        c.manager_token = Some("t".into());
        c.cors_origins = vec!["https://admin.example".into()];
    });
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http_addr()).unwrap();
    s.write_all(b"OPTIONS /user/token HTTP/1.1\r\nHost: localhost\r\nOrigin: https://admin.example\r\nAccess-Control-Request-Headers: content-type, token\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 204"), "{out}");
    assert!(
        out.contains("Access-Control-Allow-Origin: https://admin.example"),
        "{out}"
    );
    assert!(out.contains("Access-Control-Allow-Headers: content-type, token"));
}

#[test]
fn probes_need_no_manager_token_and_ready_says_ok() {
    let server = start("probes", |c| c.manager_token = Some("m".into()));
    let http = server.http_addr();
    for path in ["/health", "/ready", "/metrics", "/v1/ready"] {
        assert_eq!(
            util::http_text(http, path).0,
            200,
            "{path} needs a credential"
        );
    }
    assert_eq!(
        util::http_text(http, "/varz").0,
        401,
        "/varz shows settings"
    );
    assert_eq!(
        util::http_text(http, "/ready").1,
        json!({"status": "ok"}).to_string()
    );
    let (_, metrics) = util::http_text(http, "/metrics");
    assert!(
        metrics.contains("ruyi_storage_failed_batches_total 0"),
        "{metrics}"
    );
}
