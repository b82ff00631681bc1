//! `pgtrickle-coordinator`: the three-node Raft service of pg_trickle federation.
//!
//! Skeleton: the service (openraft over `raft-store`, HTTP admin API, CLI) is built by its own issue; see
//! docs/ARCHITECTURE.md "What exists". Until then the binary says so and exits with status 2.

fn main() {
    eprintln!("pgtrickle-coordinator: the coordinator service is not built yet (see docs/ARCHITECTURE.md)");
    std::process::exit(2);
}
