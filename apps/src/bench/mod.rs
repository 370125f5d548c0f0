//! Benchmarks. Each prints ratios against peers measured in the same run: absolute
//! numbers on shared machines vary, ratios much less.

mod bare;
pub mod iceoryx;
pub mod ipc;
pub mod tcp;
