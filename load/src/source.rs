//! Source addresses for load clients: 127.0.0.1 ..= 127.0.0.<sources>, each with its own
//! ephemeral ports (and its own per-address limits on the server).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

/// The source address of connection `index`: 127.0.0.1 ..= 127.0.0.<sources> in turn.
pub(crate) fn source_of(index: usize, sources: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(sources.max(1))) as u8)
}

/// Binds `socket` to `source` with the port left to `connect`.
///
/// A plain `bind(source, 0)` must pick a port no other socket on that address holds,
/// TIME_WAIT ones included, without knowing the destination: after a few storms of 15,000
/// connections each, the kernel searched so long per bind that a storm the server answered
/// within 0.5 s per login took the client 4–30 s to open (BENCHMARKS.md, the login storms).
/// `IP_BIND_ADDRESS_NO_PORT` defers the choice to `connect`, which may reuse a port for
/// another destination, as a connect without a bind does.
pub(crate) fn bind_source(socket: &socket2::Socket, source: Ipv4Addr) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // An old kernel: the plain bind still works, only slower under many TIME_WAITs.
        log::debug!("IP_BIND_ADDRESS_NO_PORT: {}", io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::from((source, 0)).into())
}
