//! TLS on the client listeners (`--listen-tls`): rustls for the handshake, then a record
//! layer of our own that keeps ~110 B per idle connection (`records.rs`); the
//! per-connection state machine (`session.rs`); certificates and their reload
//! (`server_config.rs`); the fleet's session-ticket keys (`tickets.rs`); the
//! client side of `https://` gateway links (`client.rs`).

pub mod client;
pub mod records;
pub mod server_config;
pub mod session;
pub mod tickets;

#[cfg(test)]
mod tests;
