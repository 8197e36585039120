//! The publish stream tests of `publish_stream.rs`, the same code, on the Redis store.

#[path = "publish_stream.rs"]
mod publish_stream;
