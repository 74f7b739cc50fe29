//! The client address a trusted HTTP proxy reports in a forwarded header (a WebSocket
//! reverse proxy such as nginx names the client this way instead of with a PROXY header).
//!
//! Believed only from a connection whose peer is a trusted proxy (`--proxy-from`; the
//! gateway checks), and only from the one header the operator names
//! (`--proxy-client-header`): a proxy sets one and passes the others through as the client
//! sent them, so reading any other would let a client name itself.
//! - `X-Forwarded-For` (the default): every proxy appends the address it saw, while a
//!   client can write anything at the start; so the list (all such headers, in order) is
//!   walked from the right, past the entries that are trusted proxies themselves, and the
//!   first other address is the client. An entry that is not an address, or a header that
//!   is not text, ends the walk with no answer (the connection keeps the proxy's address).
//! - `X-Real-Ip`: the proxy sets it; when there are several, the last is the proxy's.

use ruyi_reactor::ProxyTrust;
use std::net::{IpAddr, SocketAddr};

/// Which header names the client (`Config::proxy_client_header`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHeader {
    /// `X-Forwarded-For`, walked from the right (module docs).
    XForwardedFor,
    /// `X-Real-Ip`, the last one.
    XRealIp,
}

impl ClientHeader {
    /// Reads a setting: the header's name, in any case.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(name: &str) -> Result<ClientHeader, String> {
        match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ClientHeader::XForwardedFor),
            "x-real-ip" => Ok(ClientHeader::XRealIp),
            _ => Err(format!(
                "proxy_client_header {name:?} is neither X-Forwarded-For nor X-Real-Ip"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ClientHeader::XForwardedFor => "x-forwarded-for",
            ClientHeader::XRealIp => "x-real-ip",
        }
    }
}

/// The client `headers` name through `which`; `None` when they name no usable address.
pub fn client(
    headers: &[httparse::Header<'_>],
    which: ClientHeader,
    trust: &ProxyTrust,
) -> Option<IpAddr> {
    let mut values = Vec::new();
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(which.name()))
    {
        // A value that is not text names nobody: skipping it would let the next one,
        // which a client may have written, stand in.
        values.push(std::str::from_utf8(h.value).ok()?);
    }
    match which {
        ClientHeader::XRealIp => address(values.last()?),
        ClientHeader::XForwardedFor => {
            let hops = values
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|h| !h.is_empty());
            let mut client = None;
            for hop in hops.rev() {
                let ip = address(hop)?;
                client = Some(ip);
                if !trust.trusts(ip) {
                    break;
                }
            }
            client
        }
    }
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

    fn headers<'a>(pairs: &[(&'a str, &'a [u8])]) -> Vec<httparse::Header<'a>> {
        pairs
            .iter()
            .map(|&(name, value)| httparse::Header { name, value })
            .collect()
    }

    fn xff(pairs: &[(&str, &[u8])]) -> Option<IpAddr> {
        client(&headers(pairs), ClientHeader::XForwardedFor, &trust())
    }

    #[test]
    fn the_rightmost_address_that_is_not_a_proxy_is_the_client() {
        assert_eq!(
            xff(&[("X-Forwarded-For", b"203.0.113.5")]),
            ip("203.0.113.5")
        );
        // A client that forges the start of the list gets only its own address.
        let forged: &[u8] = b"1.1.1.1, 203.0.113.5, 10.0.0.2";
        assert_eq!(xff(&[("x-forwarded-for", forged)]), ip("203.0.113.5"));
        // Two headers read as one list, in order.
        let two = [
            ("X-Forwarded-For", b"198.51.100.1".as_slice()),
            ("X-Forwarded-For", b"203.0.113.5:4711, 10.0.0.9".as_slice()),
        ];
        assert_eq!(xff(&two), ip("203.0.113.5"));
        assert_eq!(
            xff(&[("X-Forwarded-For", b"[2001:db8::7]:80")]),
            ip("2001:db8::7")
        );
        // Every hop a proxy: the farthest one.
        assert_eq!(
            xff(&[("X-Forwarded-For", b"10.0.0.3, 10.0.0.2")]),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn only_the_named_header_counts_and_garbage_names_nobody() {
        // The client's own X-Real-Ip is not read when X-Forwarded-For is the setting...
        assert_eq!(xff(&[("X-Real-Ip", b"6.6.6.6")]), None);
        // ...nor does a header that is not text let it stand in.
        let bad = [
            ("X-Forwarded-For", b"\xff, 203.0.113.40".as_slice()),
            ("X-Real-Ip", b"6.6.6.6".as_slice()),
        ];
        assert_eq!(xff(&bad), None);
        assert_eq!(xff(&[("X-Forwarded-For", b"unknown, 10.0.0.2")]), None);
        assert_eq!(
            xff(&[("X-Forwarded-For", b"::ffff:203.0.113.9")]),
            ip("203.0.113.9")
        );
        // X-Real-Ip: the last one is the proxy's.
        let real = headers(&[("X-Real-Ip", b"6.6.6.6"), ("x-real-ip", b"203.0.113.41")]);
        assert_eq!(
            client(&real, ClientHeader::XRealIp, &trust()),
            ip("203.0.113.41")
        );
        assert_eq!(ClientHeader::parse("X-Real-IP"), Ok(ClientHeader::XRealIp));
        assert!(ClientHeader::parse("Forwarded").is_err());
    }
}
