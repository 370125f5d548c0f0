//! The rbufnic applications as library functions; `main.rs` is a thin command line over
//! them.

pub mod bench;
pub mod fwd;
pub mod list;
