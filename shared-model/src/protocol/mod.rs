//! The publish/apply protocol's state machines: inputs (time included) in, actions out, no I/O. The extension's
//! workers execute their actions; the deterministic simulation runs the same machines.

pub mod consumer;
pub mod producer;
