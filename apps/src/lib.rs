//! The rbufnic applications as library functions; `main.rs` is a thin command line over
//! them.

pub mod bench;
pub mod bind;
pub mod capture;
pub mod fwd;
pub mod list;
pub mod nics;
pub mod pktgen;
pub mod serve;
