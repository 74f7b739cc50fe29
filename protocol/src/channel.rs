//! Channel addressing (PROTOCOL.md §8.1): the combined id of a person chat.

/// The storage id of the person chat between `a` and `b`, the same from both sides: the uid
/// with the larger CRC-32 (IEEE) comes first, `larger@smaller`; on a CRC tie the
/// lexically larger uid comes first (the v3 rule; v2's tie order depended on argument order).
pub fn person_channel_id(a: &str, b: &str) -> String {
    let (ha, hb) = (crc32fast::hash(a.as_bytes()), crc32fast::hash(b.as_bytes()));
    let a_first = ha > hb || (ha == hb && a >= b);
    let (first, second) = if a_first { (a, b) } else { (b, a) };
    let mut id = String::with_capacity(first.len() + 1 + second.len());
    id.push_str(first);
    id.push('@');
    id.push_str(second);
    id
}

/// For a combined person id `x@y` and one of its uids, the other uid.
pub fn person_peer<'a>(combined: &'a str, uid: &str) -> Option<&'a str> {
    let (x, y) = combined.split_once('@')?;
    if x == uid {
        Some(y)
    } else if y == uid {
        Some(x)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(person_channel_id("u1", "u2"), "u2@u1");
        assert_eq!(person_channel_id("u2", "u1"), "u2@u1");
        assert_eq!(person_channel_id("alice", "bob"), "bob@alice");
        assert_eq!(person_channel_id("10001", "10002"), "10002@10001");
    }

    #[test]
    fn peer_of_a_combined_id() {
        assert_eq!(person_peer("u2@u1", "u1"), Some("u2"));
        assert_eq!(person_peer("u2@u1", "u2"), Some("u1"));
        assert_eq!(person_peer("u2@u1", "u3"), None);
    }
}
