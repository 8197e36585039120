//! Every socket option the worker sets, in one place (socket2), and listener binding.

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Which socket the options are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A listening socket (before `bind`).
    Listener,
    /// A connection just accepted from a listener.
    Accepted,
}

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

/// Applies every option for `role`: reuseaddr, reuseport, nodelay, keepalive, buffer
/// sizes, non-blocking. (Linux copies most of them from a listener to the sockets it
/// accepts; they are set again on accepted sockets so nothing depends on that.)
pub fn apply(sock: SockRef<'_>, role: Role, opts: &SocketOptions) -> io::Result<()> {
    if role == Role::Listener {
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
    }
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
    apply(SockRef::from(&socket), Role::Listener, opts)?;
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
