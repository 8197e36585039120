//! Worker links: `GET /v1/link` with `Upgrade: pushgate-link/2` turns an HTTP connection
//! into a stream of binary frames ([`protocol::link`]). [`handle`] is the link as the rest
//! of the gateway sees it (identity, bounded queue, backpressure); [`serve`] runs one
//! upgraded connection (Hello, heartbeats, subscriptions up; backlogs, deliveries, kicks
//! down).

pub mod handle;
pub mod refusals;
pub mod serve;
pub mod shared_tcp;

pub use handle::LinkHandle;
