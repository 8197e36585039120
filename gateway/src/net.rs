//! Socket options of the gateway, in one place: the listening socket and accepted streams.

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::net::SocketAddr;
use std::time::Duration;

/// Listen backlog of the public socket.
const BACKLOG: i32 = 4096;

/// Binds the public listener (reuseaddr, large backlog, non-blocking for tokio).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind(addr, false)
}

/// Binds `n` listeners sharing one address with SO_REUSEPORT, one per runtime thread: the
/// first to `addr` (port 0 is resolved there), the rest to the address it got. Returns the
/// address and the listeners; `n` = 1 is [`bind_listener`].
///
/// A port another process already listens on is refused as without SO_REUSEPORT (a plain
/// bind is tried first), so a second gateway started on the same port fails instead of
/// silently taking half of the connections.
pub fn bind_group(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    if n <= 1 {
        let l = bind_listener(addr)?;
        return Ok((l.local_addr()?, vec![l]));
    }
    if addr.port() != 0 {
        // Bound, never listening: nothing is accepted on it.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let first = bind(addr, true)?;
    let actual = first.local_addr()?;
    let mut all = Vec::with_capacity(n);
    all.push(first);
    for _ in 1..n {
        all.push(bind(actual, true)?);
    }
    Ok((actual, all))
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Options for an accepted connection (API clients and worker links alike): no Nagle delay
/// for small frames, keepalive so a vanished peer is noticed.
pub fn tune_accepted(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Whether an accept error means "out of file descriptors" (back off, do not spin).
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// The source IP of the connection a request came on (a request extension the publish
/// rate limits read).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// Which listener a request came in on: `--listen` (the API, worker links, and the admin
/// surface unless `--admin-listen` moves it) or `--admin-listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Api,
    Admin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_zero_group_shares_one_port() {
        let (addr, ls) = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(ls.len(), 3);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
    }

    #[test]
    fn a_group_does_not_join_a_port_in_use() {
        let (addr, _ours) = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let e = bind_group(addr, 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        let plain = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let e = bind_group(plain.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
