//! Deterministic, seeded fault simulations of the coordinator cluster and of the frontier protocol.
//!
//! Skeleton: the simulations are built with the coordinator and federation issues (see docs/ARCHITECTURE.md).
