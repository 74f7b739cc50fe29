//! How much one HTTP answer may carry. Pool threads only.
//!
//! The engine closes a connection whose unsent output passes `max_outbound_bytes` (4 MiB)
//! as a slow consumer, and it queues an answer whole. So an answer that lists messages
//! (history, the offline queue, fetch by seq, conversation recents) stops at
//! [`ANSWER_BUDGET_BYTES`] of message JSON and says there is more (`more: 1`, or a shorter
//! list the client pages on from): a client can always page through anything stored. One
//! message always fits: its payload is at most 1 MiB, 1.4 MiB as base64.

use serde_json::Value;

/// Message JSON one answer carries at most (module docs).
pub const ANSWER_BUDGET_BYTES: usize = 2 << 20;

/// The serialized size of `v` (serde_json writes into a counter, no buffer).
pub fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// Keeps as many of `list` as fit in the budget (at least one), from the front when
/// `keep_front`, else from the back (order kept). Returns whether any was left out.
pub fn fit(list: &mut Vec<Value>, keep_front: bool) -> bool {
    let mut used = 0;
    let mut fits = 0;
    let sizes: Vec<usize> = list.iter().map(json_len).collect();
    let order: Box<dyn Iterator<Item = &usize>> = if keep_front {
        Box::new(sizes.iter())
    } else {
        Box::new(sizes.iter().rev())
    };
    for &size in order {
        if fits > 0 && used + size > ANSWER_BUDGET_BYTES {
            break;
        }
        used += size;
        fits += 1;
    }
    let cut = fits < list.len();
    if keep_front {
        list.truncate(fits);
    } else {
        list.drain(..list.len() - fits);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(n: usize) -> Value {
        Value::String("x".repeat(n))
    }

    #[test]
    fn a_list_is_cut_at_the_budget_from_the_side_asked_and_never_to_nothing() {
        let third = ANSWER_BUDGET_BYTES / 3;
        let mut list: Vec<Value> = (0..7).map(|_| big(third)).collect();
        list.push(Value::from(7));
        assert!(fit(&mut list, false));
        assert_eq!(list.len(), 3, "from the back: the 7 and two big ones");
        assert_eq!(list[2], Value::from(7));
        let mut one = vec![big(3 * ANSWER_BUDGET_BYTES)];
        assert!(!fit(&mut one, true));
        assert_eq!(one.len(), 1);
        assert_eq!(json_len(&Value::from("ab")), 4);
    }
}
