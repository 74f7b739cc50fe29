//! The PROXY protocol (HAProxy's v1 text and v2 binary headers): a load balancer in front
//! of a listener tells the server, in the first bytes of each connection, whom it is
//! relaying.
//!
//! A listener that accepts it ([`crate::EngineBuilder::proxy_protocol`]) is given the source
//! ranges it trusts ([`ProxyTrust`]). Per connection:
//! - From a trusted source, a header is honoured: the engine takes it off the stream
//!   before the handler sees a byte, and the client
//!   address in it becomes the connection's address (`ConnCtx::peer_addr`) and what
//!   `max_connections_per_ip` counts. A trusted source itself is not counted per address:
//!   it is the proxy, with every client behind it. The listener says whether a trusted
//!   source must send one ([`HeaderRule`]): an L4 balancer in front of a TCP port always
//!   does, and a connection from it without one is closed (were its range to carry
//!   clients' own connections too, a NAT say, they could not pass for proxies); a
//!   WebSocket reverse proxy speaks HTTP and names the client in its own headers instead.
//! - From any other source, first bytes that begin a header close the connection
//!   (`CloseReason::ProxyHeader`): no client can forge its address.
//!
//! Parsing is the `ppp` crate's; this module decides where a header ends and what it says.

use ipnet::IpNet;
use ppp::PartialResult;
use std::net::{IpAddr, SocketAddr};

/// The v1 header's first bytes ("PROXY" and its separator).
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v2 header's signature.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// A v1 header is at most 107 bytes (the spec's bound, ppp's `MAX_LENGTH`).
const V1_MAX: usize = 107;
/// A v2 header's addresses and TLVs, at most: the spec allows 64 KiB, proxies send a few
/// hundred bytes (AWS's and Google's TLVs included). Bounds what a trusted source can make
/// a connection hold before its first byte of protocol.
const V2_MAX_BODY: usize = 4096;

/// The source ranges a listener honours PROXY headers (and forwarded-for headers, which
/// the handler reads) from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyTrust {
    ranges: Vec<IpNet>,
}

impl ProxyTrust {
    /// Trusts `ranges`: CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses.
    ///
    /// # Errors
    /// An entry that is neither, named in the message.
    pub fn parse<S: AsRef<str>>(ranges: &[S]) -> Result<ProxyTrust, String> {
        let parsed = ranges
            .iter()
            .map(|r| {
                let r = r.as_ref().trim();
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{r:?} is not an address or a CIDR range"))
            })
            .collect::<Result<_, _>>()?;
        Ok(ProxyTrust { ranges: parsed })
    }

    /// True when no source is trusted.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is in a trusted range (an IPv4-mapped IPv6 address as its IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ranges.iter().any(|r| r.contains(&ip))
    }
}

/// Whether a trusted source must open its connections with a header (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRule {
    /// A connection from a trusted source that does not open with a header is closed.
    Required,
    /// A trusted source may send one, or not (it then speaks for itself, or names the
    /// client in the handler's protocol: `ConnCtx::set_client_addr`).
    Optional,
}

/// How the first bytes of a connection are read, decided at accept by its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The listener takes no PROXY header: the bytes go to the handler as they are.
    Direct,
    /// An untrusted source on a PROXY listener: a header closes the connection.
    Untrusted,
    /// A trusted source: a header is honoured, and required when the rule says so.
    Trusted(HeaderRule),
}

/// What the first bytes of a connection on a PROXY listener are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// Not a header: the handler gets them as they are.
    Absent,
    /// A header's beginning, or too little to tell: wait for more.
    Partial,
    /// A whole header of `len` bytes, naming the client (`None`: a health check's LOCAL, or
    /// an address family without one, such as UNKNOWN).
    Complete {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// A header that cannot be read.
    Invalid(String),
}

/// True when `input` begins with a whole PROXY signature (v1's "PROXY ", v2's 12 bytes):
/// from an untrusted source that is enough to refuse, without waiting for the rest.
pub(crate) fn signed(input: &[u8]) -> bool {
    input.starts_with(V1_PREFIX) || input.starts_with(V2_SIGNATURE)
}

/// Reads the PROXY header at the start of `input`, if any.
pub(crate) fn inspect(input: &[u8]) -> Header {
    let n = input.len().min(V2_SIGNATURE.len());
    if input[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Header::Partial
        } else {
            v2(input)
        };
    }
    let n = input.len().min(V1_PREFIX.len());
    if input[..n] == V1_PREFIX[..n] {
        return if n < V1_PREFIX.len() {
            Header::Partial
        } else {
            v1(input)
        };
    }
    Header::Absent
}

fn v1(input: &[u8]) -> Header {
    use ppp::v1::Addresses;
    // A line ends with CRLF; before it, ppp reads a port cut in two as invalid.
    if !input.contains(&b'\n') && input.len() < V1_MAX {
        return Header::Partial;
    }
    match ppp::v1::Header::try_from(input) {
        Ok(h) => Header::Complete {
            len: h.header.len(),
            client: match h.addresses {
                Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Unknown => None,
            },
        },
        Err(e) => Header::Invalid(format!("PROXY v1: {e}")),
    }
}

fn v2(input: &[u8]) -> Header {
    use ppp::v2::{Addresses, Command};
    // The body's length is in bytes 14 and 15; past the bound, no need to wait for it.
    if let Some(len) = input.get(14..16) {
        let body = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if body > V2_MAX_BODY {
            return Header::Invalid(format!("PROXY v2: a {body}-byte header"));
        }
    }
    match ppp::v2::Header::try_from(input) {
        Ok(h) => Header::Complete {
            len: h.len(),
            client: match (h.command, h.addresses) {
                (Command::Proxy, Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            },
        },
        Err(e) if e.is_incomplete() => Header::Partial,
        Err(e) => Header::Invalid(format!("PROXY v2: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_tcp4(client: [u8; 4], port: u16, tlv: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x21); // version 2, PROXY
        h.push(0x11); // IPv4, stream
        h.extend_from_slice(&(12 + tlv.len() as u16).to_be_bytes());
        h.extend_from_slice(&client);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&5100u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    #[test]
    fn v1_is_read_whole_or_waited_for() {
        let full = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 5100\r\nrest";
        assert_eq!(
            inspect(full),
            Header::Complete {
                len: full.len() - 4,
                client: Some("203.0.113.7:5555".parse().unwrap()),
            }
        );
        for cut in 1..full.len() - 4 {
            assert_eq!(inspect(&full[..cut]), Header::Partial, "cut at {cut}");
        }
        let six = b"PROXY TCP6 2001:db8::1 ::1 4000 5100\r\n";
        assert!(matches!(
            inspect(six),
            Header::Complete { client: Some(a), .. } if a == "[2001:db8::1]:4000".parse().unwrap()
        ));
        assert!(matches!(
            inspect(b"PROXY UNKNOWN\r\n"),
            Header::Complete {
                len: 15,
                client: None
            }
        ));
    }

    #[test]
    fn v2_is_read_whole_or_waited_for_and_bounded() {
        let mut full = v2_tcp4([198, 51, 100, 9], 6000, &[0x04, 0, 1, 0]);
        let len = full.len();
        full.extend_from_slice(b"rest");
        assert_eq!(
            inspect(&full),
            Header::Complete {
                len,
                client: Some("198.51.100.9:6000".parse().unwrap()),
            }
        );
        for cut in 1..len {
            assert_eq!(inspect(&full[..cut]), Header::Partial, "cut at {cut}");
        }
        // LOCAL (a health check): no client.
        let mut local = v2_tcp4([198, 51, 100, 9], 6000, &[]);
        local[12] = 0x20;
        assert!(matches!(
            inspect(&local),
            Header::Complete { client: None, .. }
        ));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(inspect(&huge), Header::Invalid(_)));
    }

    #[test]
    fn protocol_bytes_are_not_headers_and_bad_headers_are_refused() {
        // A binary-protocol CONNECT and a WebSocket upgrade start otherwise.
        assert_eq!(inspect(&[0x10, 0x20]), Header::Absent);
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Header::Absent);
        assert_eq!(inspect(b"PROXX"), Header::Absent);
        assert!(matches!(
            inspect(b"PROXY TCP4 nonsense here 1 2\r\n"),
            Header::Invalid(_)
        ));
        assert!(matches!(inspect(&[b'P'; 1][..]), Header::Partial));
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(inspect(&long), Header::Invalid(_)));
    }

    #[test]
    fn trust_is_by_range_and_mapped_ipv4_counts_as_ipv4() {
        let t = ProxyTrust::parse(&["10.0.0.0/8", "192.0.2.1", "fd00::/8"]).unwrap();
        assert!(t.trusts("10.1.2.3".parse().unwrap()));
        assert!(t.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(t.trusts("192.0.2.1".parse().unwrap()));
        assert!(!t.trusts("192.0.2.2".parse().unwrap()));
        assert!(t.trusts("fd12::1".parse().unwrap()));
        assert!(!t.trusts("127.0.0.1".parse().unwrap()));
        assert!(ProxyTrust::parse(&["10.0.0.0/33"]).is_err());
        assert!(ProxyTrust::parse(&["example.com"]).is_err());
        assert!(ProxyTrust::parse::<&str>(&[]).unwrap().is_empty());
    }
}
