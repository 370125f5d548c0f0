//! Option parsing and signal handling shared by the subcommands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use driver::MacAddr;

/// Raised by the Ctrl-C handler; long-running loops check it every round.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (SIGINT, and SIGTERM) raise [`STOP`] instead of killing the process, so a
/// run ends with its summary.
pub fn stop_on_ctrl_c() -> anyhow::Result<()> {
    ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")
}

/// Parses `02:00:00:00:00:01`.
pub fn parse_mac(s: &str) -> anyhow::Result<MacAddr> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("bad MAC address {s:?} (expected six hex bytes like 02:00:00:00:00:01)");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .with_context(|| {
                format!("bad MAC address {s:?} (expected six hex bytes like 02:00:00:00:00:01)")
            })?;
    }
    Ok(MacAddr(mac))
}

/// A positive number of seconds (fractions allowed) as a duration.
pub fn seconds(what: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{what} must be a positive number of seconds, not {secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_mac("02:00:00:0a:0B:ff").unwrap(),
            MacAddr([2, 0, 0, 0x0a, 0x0b, 0xff])
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:0:0:0:0:1",
            "zz:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_must_be_positive_and_finite() {
        assert_eq!(seconds("--x", 1.5).unwrap(), Duration::from_millis(1500));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(seconds("--x", bad).is_err(), "{bad}");
        }
    }
}
