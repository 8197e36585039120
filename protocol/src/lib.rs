//! pushgate's shared vocabulary: what the gateway, the worker and loadgen must agree on.
//!
//! - [`channel`]: channel-name rules of the external contract;
//! - [`envelope`]: the JSON a client receives (`{"seq":N,"data":...}`, the gap signal, errors);
//! - [`link`]: the binary frames on the gateway<->worker link and its upgrade handshake;
//! - [`query`]: query strings and percent-encoding (one decoder for both binaries);
//! - [`ratelimit`]: sharded, bounded token buckets (the gateway's publish limits, the
//!   worker's connect limit);
//! - [`token`]: HS256 subscriber tokens.
//!
//! Everything here is plain functions over bytes: no I/O, no clocks (callers pass `now`).

pub mod channel;
pub mod envelope;
pub mod link;
pub mod query;
pub mod ratelimit;
pub mod token;

pub use channel::{validate_channel, ChannelError, MAX_CHANNEL_LEN};
