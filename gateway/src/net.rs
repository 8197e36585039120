//! Socket options of the gateway, in one place: the listening socket and accepted streams.

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::net::SocketAddr;
use std::time::Duration;

/// Listen backlog of the public socket.
const BACKLOG: i32 = 4096;

/// Binds the public listener (reuseaddr, large backlog, non-blocking for tokio).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
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
