//! Where clients are told to connect: the addresses `/route`, `/route/batch` and `/varz`
//! answer with (HTTP_API.md §3.4), WuKongIM's `external.*` settings.
//!
//! A listener on a wildcard address (`0.0.0.0:5100`, the default) names no address a
//! client can dial, so the advertised one is built from `external_ip` or, unset, from the
//! machine's own first non-loopback address; an address set in full
//! (`external_tcp_addr`, `external_ws_addr`, `external_wss_addr`: what a load balancer or
//! a NAT in front publishes) is taken as it is. A wildcard address is never advertised.

use crate::config::Config;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// The three addresses a client may be sent to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertised {
    /// `host:port` of the binary protocol over TCP.
    pub tcp: String,
    /// `ws://host:port` of the WebSocket listener.
    pub ws: String,
    /// `wss://host:port`: `external_wss_addr`, else the WebSocket-over-TLS listener's
    /// when there is one; empty otherwise.
    pub wss: String,
}

impl Advertised {
    /// The addresses for listeners bound at `tcp`, `ws` and `wss` (their real ports).
    pub fn resolve(
        config: &Config,
        tcp: SocketAddr,
        ws: SocketAddr,
        wss: Option<SocketAddr>,
    ) -> Advertised {
        let host = |bound: IpAddr| match &config.external_ip {
            Some(ip) => ip.clone(),
            None if bound.is_unspecified() => own_address().to_string(),
            None => bound.to_string(),
        };
        let join = |host: String, port: u16| match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port).to_string(), // brackets an IPv6 address
            Err(_) => format!("{host}:{port}"),
        };
        Advertised {
            tcp: config
                .external_tcp_addr
                .clone()
                .unwrap_or_else(|| join(host(tcp.ip()), tcp.port())),
            ws: config
                .external_ws_addr
                .clone()
                .unwrap_or_else(|| format!("ws://{}", join(host(ws.ip()), ws.port()))),
            wss: match (&config.external_wss_addr, wss) {
                (Some(set), _) => set.clone(),
                (None, Some(wss)) => format!("wss://{}", join(host(wss.ip()), wss.port())),
                (None, None) => String::new(),
            },
        }
    }
}

/// The address this machine reaches others from: the source address the kernel picks
/// for a datagram to a public address (nothing is sent: `connect` on UDP only routes), or
/// loopback when there is no route (a machine with no network, where loopback is all a
/// client can use anyway).
fn own_address() -> IpAddr {
    let routed = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        // TEST-NET-1 (RFC 5737): routable for the lookup, never answered.
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match routed {
        Ok(addr) if !addr.ip().is_unspecified() => addr.ip(),
        _ => {
            log::warn!(
                "no route off this machine: clients are told to connect to 127.0.0.1 (set --external-ip)"
            );
            IpAddr::from([127, 0, 0, 1])
        }
    }
}
