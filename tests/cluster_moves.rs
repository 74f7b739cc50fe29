//! Devices that move between nodes while a commit batch is on its way (issue 17): a node
//! pushes a batch only to devices that logged in by the leader's stamp
//! (`cluster/devices.rs`), and a device it did not push holds nothing for another that
//! goes. Followers handle each batch 2 s late here (`RUYI_FAILPOINT_SLOW_BATCHES`), long
//! enough for a device to move or log in meanwhile.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type::PERSON, reason};
use std::time::Duration;
use util::cluster::*;
use util::nats::Nats;
use util::pg::Pg;
use util::*;

/// Three nodes whose followers handle each batch 2 s late: (nodes, leader, a follower).
fn slow_followers(pg: &Pg, nats: &Nats, name: &str) -> (Vec<Node>, usize, usize) {
    let store = pg.database(name);
    let env = [("RUYI_FAILPOINT_SLOW_BATCHES", "2000")];
    let nodes: Vec<Node> = (1..=3)
        .map(|id| Node::spawn_with_env(&store, nats, id, &env))
        .collect();
    let lead = agree(&nodes);
    let follower = (0..3).find(|&i| i != lead).unwrap();
    (nodes, lead, follower)
}

#[test]
fn a_device_that_moved_after_its_push_is_not_pushed_the_message_again() {
    let Some(pg) = Pg::start() else { return };
    let Some(nats) = Nats::start() else { return };
    let (nodes, lead, follower) = slow_followers(&pg, &nats, "moved");
    let mut alice = Client::ok(nodes[lead].process.tcp, &Login::new("alice", "x"));
    let mut bob = Client::ok(nodes[lead].process.tcp, &Login::new("bob", "x"));
    alice.send("bob", PERSON, b"first", "first");
    assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    // Pushed on the leader, acknowledged; then bob moves to a follower, which has not
    // handled the batch yet.
    assert_eq!(receive(&mut bob, 1)[0].0, "first");
    drop(bob);
    let mut bob = Client::ok(nodes[follower].process.tcp, &Login::new("bob", "x"));
    assert!(
        bob.quiet_for(Duration::from_secs(4)),
        "the message bob had on the leader was pushed again on the node he moved to"
    );
    // Once the leader has heard of his login, what comes next reaches him there.
    std::thread::sleep(Duration::from_millis(500));
    alice.send("bob", PERSON, b"second", "second");
    assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    assert_eq!(receive(&mut bob, 1)[0].0, "second");
}

#[test]
fn a_device_the_batch_skipped_does_not_hold_a_message_another_device_missed() {
    let Some(pg) = Pg::start() else { return };
    let Some(nats) = Nats::start() else { return };
    let (nodes, lead, follower) = slow_followers(&pg, &nats, "skipped");
    let phone_login = Login {
        device_flag: 0,
        device_id: "phone",
        ..Login::new("bob", "x")
    };
    let mut phone = Client::ok(nodes[follower].process.tcp, &phone_login);
    // The leader hears of the phone, and plans bob online on the follower: a reserved
    // queue seq, written only if the device there misses the message.
    std::thread::sleep(Duration::from_millis(1500));
    let mut alice = Client::ok(nodes[lead].process.tcp, &Login::new("alice", "x"));
    alice.send("bob", PERSON, b"m", "m");
    let ack = alice.sendack();
    assert_eq!(ack.reason_code, reason::SUCCESS);
    // Bob's PC logs in on the same follower before it handles the batch: above the stamp,
    // so not pushed the message.
    let pc_login = Login {
        device_flag: 2,
        device_id: "pc",
        ..Login::new("bob", "x")
    };
    let mut pc = Client::ok(nodes[follower].process.tcp, &pc_login);
    let r = phone.recv();
    assert_eq!(r.message_id, ack.message_id);
    // The phone goes without acknowledging it: the PC does not hold it, so bob's queue
    // must get it.
    drop(phone);
    assert!(
        pc.quiet_for(Duration::from_secs(2)),
        "the PC was pushed a batch from before its login"
    );
    let http = nodes[lead].process.http;
    wait_for(
        "the phone's miss in bob's queue",
        Duration::from_secs(10),
        || {
            queue(http, "bob")
                .iter()
                .any(|m| m["message_id"].as_i64() == Some(ack.message_id))
        },
    );
}

#[test]
fn a_device_whose_login_notice_was_lost_is_pushed_once_the_leader_reads_the_epochs() {
    let Some(pg) = Pg::start() else { return };
    let Some(nats) = Nats::start() else { return };
    let store = pg.database("unheard");
    // No node's login notices reach the others: the leader never counts a device of
    // another node, and learns of their logins only from the epoch sequence.
    let env = [("RUYI_FAILPOINT_MUTE_LOGIN_NOTICES", "1")];
    let nodes: Vec<Node> = (1..=3)
        .map(|id| Node::spawn_with_env(&store, &nats, id, &env))
        .collect();
    let lead = agree(&nodes);
    let follower = (0..3).find(|&i| i != lead).unwrap();
    let phone_login = Login {
        device_flag: 0,
        device_id: "phone",
        ..Login::new("bob", "x")
    };
    let mut phone = Client::ok(nodes[lead].process.tcp, &phone_login);
    let mut alice = Client::ok(nodes[lead].process.tcp, &Login::new("alice", "x"));
    // The newest login of all, on a follower, unheard of: bob online on the leader only,
    // as far as the leader knows (a seq reserved for him, not stored).
    let pc_login = Login {
        device_flag: 2,
        device_id: "pc",
        ..Login::new("bob", "x")
    };
    let mut pc = Client::ok(nodes[follower].process.tcp, &pc_login);
    std::thread::sleep(Duration::from_millis(1500));
    alice.send("bob", PERSON, b"m", "m");
    assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    assert_eq!(receive(&mut phone, 1)[0].0, "m");
    assert_eq!(
        receive(&mut pc, 1)[0].0,
        "m",
        "a device the stamp never came to cover gets nothing live"
    );
}
