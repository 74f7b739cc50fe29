//! The client address a trusted HTTP proxy reports in `X-Forwarded-For` or `X-Real-Ip`
//! (a WebSocket reverse proxy such as nginx sends these instead of a PROXY header).
//!
//! Believed only from a connection whose peer is a trusted proxy (`--proxy-from`; the
//! gateway checks), and read the way that cannot be forged from outside: a client can put
//! anything at the *start* of `X-Forwarded-For`, but each proxy appends the address it saw,
//! so the list is walked from the right, past the entries that are trusted proxies
//! themselves, and the first other address is the client. An entry that is not an address
//! ends the walk with no answer (the connection keeps the proxy's address).

use ruyi_reactor::ProxyTrust;
use std::net::{IpAddr, SocketAddr};

/// The client named by `forwarded_for` (every `X-Forwarded-For` value, in order) or, when
/// there is none, `real_ip`; `None` when neither names a usable address.
pub fn client<'a>(
    forwarded_for: impl Iterator<Item = &'a str>,
    real_ip: Option<&str>,
    trust: &ProxyTrust,
) -> Option<IpAddr> {
    let hops: Vec<&str> = forwarded_for
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if hops.is_empty() {
        return real_ip.and_then(address);
    }
    let mut client = None;
    for hop in hops.iter().rev() {
        let ip = address(hop)?;
        client = Some(ip);
        if !trust.trusts(ip) {
            break;
        }
    }
    client
}

/// An entry as proxies write it: `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711` or
/// `[2001:db8::1]:4711`.
fn address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> ProxyTrust {
        ProxyTrust::parse(&["10.0.0.0/8"]).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_rightmost_address_that_is_not_a_proxy_is_the_client() {
        let t = trust();
        assert_eq!(
            client(["203.0.113.5"].into_iter(), None, &t),
            ip("203.0.113.5")
        );
        // A client that forges the start of the list gets only its own address.
        let forged = ["1.1.1.1, 203.0.113.5, 10.0.0.2"];
        assert_eq!(client(forged.into_iter(), None, &t), ip("203.0.113.5"));
        // Two headers read as one list, in order.
        let two = ["198.51.100.1", "203.0.113.5:4711, 10.0.0.9"];
        assert_eq!(client(two.into_iter(), None, &t), ip("203.0.113.5"));
        assert_eq!(
            client(["[2001:db8::7]:80"].into_iter(), None, &t),
            ip("2001:db8::7")
        );
        // Every hop a proxy: the farthest one.
        assert_eq!(
            client(["10.0.0.3, 10.0.0.2"].into_iter(), None, &t),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn real_ip_is_read_without_a_list_and_garbage_names_nobody() {
        let t = trust();
        let none = std::iter::empty();
        assert_eq!(client(none, Some("203.0.113.8"), &t), ip("203.0.113.8"));
        assert_eq!(client(std::iter::empty(), Some("nobody"), &t), None);
        assert_eq!(client(std::iter::empty(), None, &t), None);
        assert_eq!(client(["unknown, 10.0.0.2"].into_iter(), None, &t), None);
        assert_eq!(
            client(["::ffff:203.0.113.9"].into_iter(), None, &t),
            ip("203.0.113.9")
        );
    }
}
