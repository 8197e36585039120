//! The public HTTP API of the gateway (hyper 1.x, HTTP/1.1), one room per job: the accept
//! loop and connection settings ([`server`]), routing ([`routes`]), CORS ([`cors`]),
//! assign ([`assign`]), publish, NDJSON batches and broadcast ([`publish`]), publish
//! streams ([`stream`]), the read-only
//! views ([`views`]), the worker link upgrade ([`upgrade`]), publisher keys ([`auth`]),
//! bodies with limits ([`body`]), every refusal ([`rejection`]) and response helpers
//! ([`reply`]). Below hyper, every request head is checked first ([`head_guard`], driven
//! by [`guard_io`]), so malformed requests get the same JSON errors. Every error is JSON
//! `{"error":code,"message":text}`.
//!
//! This file only declares the rooms: a parent that re-exported its children's items while
//! they used its own would be an import circle.

pub mod assign;
pub mod auth;
pub mod body;
pub mod cors;
pub mod guard_io;
pub mod head_guard;
pub mod publish;
pub mod rejection;
pub mod reply;
pub mod routes;
pub mod server;
pub mod stats;
pub mod stream;
pub mod upgrade;
pub mod views;
