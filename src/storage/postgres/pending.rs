//! Rows the PostgreSQL writer holds back and sends in one statement each: a batch's new
//! messages, its offline-queue entries and its channels' counter moves. One round trip
//! per statement is the cost that sets the PostgreSQL store's pace (BENCHMARKS.md, issue
//! 16), and a batch of a thousand messages otherwise makes a thousand of them.
//!
//! # Invariant
//! Every other statement of the transaction runs after the held rows are written
//! ([`super::tx::PgTx`] flushes first), so reads and the rules built on them see exactly
//! what they would see row by row. A savepoint's rows are written before it is released
//! and dropped with it when it is rolled back.

use crate::message::Message;
use postgres::types::ToSql;
use std::collections::BTreeMap;

/// One batch's held rows, as column arrays for `UNNEST`.
#[derive(Debug, Default)]
pub struct Pending {
    m_channel: Vec<i64>,
    m_seq: Vec<i64>,
    m_id: Vec<i64>,
    m_cmn: Vec<String>,
    m_from: Vec<String>,
    m_to: Vec<String>,
    m_ts: Vec<i64>,
    m_setting: Vec<i64>,
    m_flags: Vec<i64>,
    m_expire: Vec<i64>,
    m_topic: Vec<String>,
    m_payload: Vec<Vec<u8>>,
    /// Channel row → the highest seq written in it (in row order: two writers lock the
    /// counter rows in the same order, so they never deadlock on them).
    counters: BTreeMap<i64, i64>,
    o_uid: Vec<String>,
    o_seq: Vec<i64>,
    o_channel: Vec<i64>,
    o_channel_seq: Vec<i64>,
    o_keep: Vec<bool>,
    /// Payload bytes held: past [`FLUSH_BYTES`] the rows are written at once.
    bytes: usize,
}

/// Payload bytes the writer holds back at most. A statement carries every held row, and
/// PostgreSQL refuses a message over 1 GiB: a batch of a thousand 1 MiB messages must go in
/// several statements, not fail everyone's sends.
pub const FLUSH_BYTES: usize = 16 << 20;

/// The statements that write held rows, one round trip each.
pub const INSERT_MESSAGES: &str = "INSERT INTO messages (channel, seq, message_id, client_msg_no,
        from_uid, addressed_to, timestamp, setting, flags, expire, topic, payload)
    SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[],
        $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[],
        $12::BYTEA[])";

/// See [`INSERT_MESSAGES`].
pub const MOVE_COUNTERS: &str = "UPDATE channels c SET last_seq = GREATEST(c.last_seq, v.s)
    FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS v(id, s) WHERE c.id = v.id";

/// See [`INSERT_MESSAGES`].
pub const INSERT_OFFLINE: &str = "INSERT INTO offline (uid, seq, channel, channel_seq, keep)
    SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BOOLEAN[])";

impl Pending {
    /// Holds message `m` (its seq set) of channel `row`, and its counter move.
    pub fn message(&mut self, row: i64, m: &Message) {
        self.m_channel.push(row);
        self.m_seq.push(i64::from(m.message_seq));
        self.m_id.push(m.message_id);
        self.m_cmn.push(m.client_msg_no.clone());
        self.m_from.push(m.from_uid.clone());
        self.m_to.push(m.addressed_to.clone());
        self.m_ts.push(i64::from(m.timestamp));
        self.m_setting.push(i64::from(m.setting));
        self.m_flags
            .push(i64::from(m.flags.0 & !ruyi_proto::Flags::DUP));
        self.m_expire.push(i64::from(m.expire));
        self.m_topic.push(m.topic.clone());
        self.m_payload.push(m.payload.to_vec());
        self.bytes += m.payload.len() + m.client_msg_no.len() + m.topic.len() + 64;
        let top = self.counters.entry(row).or_default();
        *top = (*top).max(i64::from(m.message_seq));
    }

    /// Holds an offline-queue entry.
    pub fn offline(&mut self, uid: &str, seq: u32, channel: i64, channel_seq: u32, keep: bool) {
        self.o_uid.push(uid.to_owned());
        self.o_seq.push(i64::from(seq));
        self.o_channel.push(channel);
        self.o_channel_seq.push(i64::from(channel_seq));
        self.o_keep.push(keep);
    }

    /// True when the held rows should be written now ([`FLUSH_BYTES`]).
    pub fn is_full(&self) -> bool {
        self.bytes >= FLUSH_BYTES
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.m_seq.is_empty() && self.o_seq.is_empty()
    }

    /// The statements that write what is held, with their parameters, in order (messages
    /// before the entries that refer to them), and empties the holder.
    pub fn take(&mut self) -> Vec<(&'static str, Vec<Box<dyn ToSql + Sync>>)> {
        let p = std::mem::take(self);
        let mut out: Vec<(&'static str, Vec<Box<dyn ToSql + Sync>>)> = Vec::new();
        if !p.m_seq.is_empty() {
            out.push((
                INSERT_MESSAGES,
                vec![
                    Box::new(p.m_channel),
                    Box::new(p.m_seq),
                    Box::new(p.m_id),
                    Box::new(p.m_cmn),
                    Box::new(p.m_from),
                    Box::new(p.m_to),
                    Box::new(p.m_ts),
                    Box::new(p.m_setting),
                    Box::new(p.m_flags),
                    Box::new(p.m_expire),
                    Box::new(p.m_topic),
                    Box::new(p.m_payload),
                ],
            ));
            let (ids, seqs): (Vec<i64>, Vec<i64>) = p.counters.into_iter().unzip();
            out.push((MOVE_COUNTERS, vec![Box::new(ids), Box::new(seqs)]));
        }
        if !p.o_seq.is_empty() {
            out.push((
                INSERT_OFFLINE,
                vec![
                    Box::new(p.o_uid),
                    Box::new(p.o_seq),
                    Box::new(p.o_channel),
                    Box::new(p.o_channel_seq),
                    Box::new(p.o_keep),
                ],
            ));
        }
        out
    }
}
