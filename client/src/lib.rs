//! `pushgate_client`: a Rust client of pushgate's public HTTP contract (v1).
//!
//! - [`Publisher`]: `POST /v1/publish/{channel}` (with an optional idempotency key),
//!   NDJSON batches and broadcasts; a refusal carries its status and JSON error code.
//! - [`Subscriber`]: asks `/v1/assign` where to connect, holds one WebSocket, SSE or
//!   long-poll connection, and yields the channel's messages in seq order, each once. It
//!   assigns again and resumes with `since` and `epoch` after every drop, tells a
//!   [`Gap`] when messages were lost, waits with jittered exponential back-off, and
//!   honours the worker's close codes: replaced (WebSocket 4001, SSE `replaced`, poll 409)
//!   stops it with [`Error::Replaced`]; "try again later" and "too slow" back off.
//!
//! ```no_run
//! use pushgate_client::{Event, Publisher, SubscribeOptions, Subscriber};
//!
//! # async fn f() -> pushgate_client::Result<()> {
//! let mut sub = Subscriber::connect(SubscribeOptions::new("http://127.0.0.1:8080", "device-42"))?;
//! Publisher::new("http://127.0.0.1:8080")?.publish("device-42", r#"{"cmd":"reboot"}"#).await?;
//! while let Some(event) = sub.next().await {
//!     match event? {
//!         Event::Message(m) => println!("{} {}", m.seq, m.data),
//!         Event::Gap(g) => println!("lost everything before {}", g.first_seq),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! `https://` and `wss://` go over rustls with the system's roots, or the configuration
//! given ([`tls_config_with_ca`] for a private CA).

#![warn(missing_docs)]

mod error;
mod net;
mod publish;
mod sse;
mod subscribe;

pub use error::{Error, Refusal, Result};
pub use net::tls_config_with_ca;
pub use publish::{
    BatchResult, BroadcastResult, Line, Published, Publisher, RejectedChannel, RejectedLine,
};
/// The rustls this crate's TLS configurations are made with.
pub use rustls;
/// The raw JSON of a message's `data`.
pub use serde_json::value::RawValue;
pub use subscribe::{Event, Gap, Message, SubscribeOptions, Subscriber, Transport};
