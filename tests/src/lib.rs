//! Test support for rbufnic: a QEMU guest harness that boots a Linux guest with emulated
//! NICs bound to `vfio-pci` ([`guest`]), network namespaces with tap devices ([`netns`]),
//! a host-side traffic peer over QEMU's UDP socket netdev ([`peer`]), and deterministic
//! test frames that guest-side code can generate and check too ([`frame`]).
//!
//! Only [`frame`] is built without the default `harness` feature, so a guest-side program
//! can depend on `rbufnic-tests = { path = "../tests", default-features = false }` and
//! check the peer's frames byte for byte.
//!
//! A scenario test in another crate boots a guest with one e1000 on a UDP link to the
//! peer, runs a freshly built binary inside it, and checks the frames it sends back:
//!
//! ```no_run
//! use std::time::Duration;
//! use rbufnic_tests::{
//!     FrameGen, Guest, HarnessError, MacAddr, Nic, ReceivePlan, SendPlan, UdpPeer, host_path,
//!     nic_bdf,
//! };
//!
//! fn echo_scenario() -> Result<(), HarnessError> {
//!     let nic_mac = MacAddr::qemu(0x10);
//!     let (peer, backend) = UdpPeer::for_qemu()?;
//!     // In the crate that has the binary, use `env!("CARGO_BIN_EXE_rbufnic-echo")`.
//!     let app = host_path(std::path::Path::new("/work/main/target/debug/rbufnic-echo"));
//!     let guest = Guest::builder()
//!         .nic(Nic::e1000(nic_mac, backend)) // bound to vfio-pci at 0000:00:03.0
//!         .hugepages(64)
//!         .env("RUST_LOG", "debug")
//!         .timeout(Duration::from_secs(120))
//!         .spawn(&format!("{} --pci {} --frames 1000", app.display(), nic_bdf(0)))?;
//!     guest.wait_for_line("ready", Duration::from_secs(60))?;
//!     let stream = FrameGen::new(1, nic_mac, MacAddr::qemu(0x99));
//!     let receiver = peer.try_clone()?;
//!     let echoed = std::thread::spawn(move || {
//!         // The echo swaps MAC addresses, so compare everything else.
//!         let plan = ReceivePlan::new(1000).timeout(Duration::from_secs(60)).check_macs(false);
//!         receiver.receive(&FrameGen::new(1, nic_mac, MacAddr::qemu(0x99)), &plan)
//!     });
//!     peer.send(&stream, &SendPlan::new(1000).rate_per_sec(2000))?;
//!     echoed.join().expect("receiver")?.check()?;
//!     guest.wait()?.expect_success()?;
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]

pub mod frame;

#[cfg(feature = "harness")]
mod error;
#[cfg(feature = "harness")]
pub mod fwd_job;
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
pub use host::{ensure_packages, harness_dir};
#[cfg(feature = "harness")]
pub use netns::{NetNs, Tap};
#[cfg(feature = "harness")]
pub use peer::{ReceivePlan, ReceiveReport, SendPlan, SendReport, UdpPeer};
