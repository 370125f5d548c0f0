//! Test support for rbufnic: a QEMU guest harness that boots a Linux guest with emulated
//! NICs bound to `vfio-pci` ([`guest`]), network namespaces with tap devices ([`netns`]),
//! a host-side traffic peer over QEMU's UDP socket netdev ([`peer`]), and deterministic
//! test frames that guest-side code can generate and check too ([`frame`]).
//!
//! Only [`frame`] is built without the default `harness` feature.

#![forbid(unsafe_code)]

pub mod frame;

#[cfg(feature = "harness")]
mod error;
#[cfg(feature = "harness")]
pub mod guest;
#[cfg(feature = "harness")]
mod host;
#[cfg(feature = "harness")]
pub mod netns;
#[cfg(feature = "harness")]
pub mod peer;

#[cfg(feature = "harness")]
pub use error::HarnessError;
pub use frame::{FrameError, FrameGen, MacAddr};
#[cfg(feature = "harness")]
pub use guest::{
    Backend, Guest, GuestBuilder, GuestOutput, Nic, NicDriver, NicModel, RunningGuest, host_path,
    nic_bdf,
};
#[cfg(feature = "harness")]
pub use host::harness_dir;
#[cfg(feature = "harness")]
pub use netns::{NetNs, Tap};
#[cfg(feature = "harness")]
pub use peer::{ReceivePlan, ReceiveReport, SendPlan, SendReport, UdpPeer};
