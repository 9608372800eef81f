//! Quorumkey test kit: a harness that runs real `qk-node` processes on
//! 127.0.0.1, shared by end-to-end tests and benchmark binaries.
#![forbid(unsafe_code)]

pub mod adversary;
pub mod bench;
pub mod cluster;
pub mod python;
pub mod stats;
