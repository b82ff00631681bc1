//! pg_trickle federation's coordinator: the HTTP API's wire types ([`api`]) and the client library ([`client`]),
//! always built; object storage by URL ([`objects`]) with the `objects` feature; the service itself ([`server`]) and its command line ([`cli`]) with the `server` feature.

pub mod api;
pub mod client;
#[cfg(feature = "objects")]
pub mod objects;

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod server;
