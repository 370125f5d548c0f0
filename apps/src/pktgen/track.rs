//! The receive side's bookkeeping: which sequence numbers came, in what order, how many
//! twice, and how long they took.
//!
//! Sequence numbers are remembered in a sliding window of [`WINDOW`] numbers behind the
//! highest one seen, one bit each, so a run of any length needs 8 KiB. A probe older than
//! the window is counted as reordered (it did come, late) but cannot be checked for being a
//! duplicate; [`Tracker::late`] says how many such there were.

use hdrhistogram::Histogram;

/// Sequence numbers remembered behind the highest one seen.
pub const WINDOW: u64 = 1 << 16;
/// Highest latency the histogram resolves (larger ones are clamped): 60 s in ns.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Counts of the received probes.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Bit `s % WINDOW` says whether `s` came, for `s` in `(highest - WINDOW, highest]`.
    seen: Vec<u64>,
    highest: Option<u64>,
    unique: u64,
    reordered: u64,
    duplicates: u64,
    late: u64,
    latency: Histogram<u64>,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker::new()
    }
}

/// Latency percentiles in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Probes measured.
    pub count: u64,
    /// Smallest.
    pub min_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker {
            seen: vec![0; (WINDOW / 64) as usize],
            highest: None,
            unique: 0,
            reordered: 0,
            duplicates: 0,
            late: 0,
            // 3 significant digits: 0.1% resolution over 1 ns..60 s.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid bounds"),
        }
    }

    fn bit(&mut self, seq: u64) -> (&mut u64, u64) {
        let i = seq % WINDOW;
        (&mut self.seen[(i / 64) as usize], 1 << (i % 64))
    }

    /// Records probe `seq` that took `latency_ns` (`None`: not measurable).
    pub fn record(&mut self, seq: u64, latency_ns: Option<u64>) {
        if let Some(ns) = latency_ns {
            self.latency.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
        }
        match self.highest {
            Some(h) if seq <= h => {
                if h - seq >= WINDOW {
                    self.late += 1;
                    self.reordered += 1;
                    self.unique += 1;
                    return;
                }
                let (word, mask) = self.bit(seq);
                if *word & mask != 0 {
                    self.duplicates += 1;
                } else {
                    *word |= mask;
                    self.unique += 1;
                    self.reordered += 1;
                }
            }
            _ => {
                // A new highest: forget the numbers that fall out of the window.
                let from = self.highest.map_or(0, |h| h + 1);
                if seq - from >= WINDOW {
                    self.seen.fill(0);
                } else {
                    for s in from..seq {
                        let (word, mask) = self.bit(s);
                        *word &= !mask;
                    }
                }
                let (word, mask) = self.bit(seq);
                *word |= mask;
                self.highest = Some(seq);
                self.unique += 1;
            }
        }
    }

    /// Distinct probes received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Probes that came after a higher sequence number.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Probes that came again.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Reordered probes older than the window (not checked for duplicates).
    pub fn late(&self) -> u64 {
        self.late
    }

    /// The latency percentiles so far.
    pub fn latency(&self) -> Latency {
        let h = &self.latency;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            min_ns: h.min(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unique_reordered_duplicate_and_late() {
        let mut t = Tracker::new();
        for s in [0, 1, 3, 2, 2, 5, 4, 4, 9] {
            t.record(s, None);
        }
        assert_eq!(
            (t.unique(), t.reordered(), t.duplicates(), t.late()),
            (7, 2, 2, 0)
        );
        // Far ahead, then something from before the window: late, not a duplicate check.
        t.record(9 + WINDOW + 10, None);
        t.record(3, None);
        assert_eq!(
            (t.unique(), t.reordered(), t.duplicates(), t.late()),
            (9, 3, 2, 1)
        );
        // The window forgot what fell out of it, and remembers what is inside.
        t.record(9 + WINDOW + 10, None);
        assert_eq!(t.duplicates(), 3);
        t.record(9 + WINDOW + 9, None);
        assert_eq!((t.unique(), t.duplicates()), (10, 3));
    }

    #[test]
    fn a_long_in_order_run_wraps_the_window_without_false_duplicates() {
        let mut t = Tracker::new();
        for s in 0..3 * WINDOW + 17 {
            t.record(s, Some(1000 + s % 100));
        }
        assert_eq!(t.unique(), 3 * WINDOW + 17);
        assert_eq!((t.reordered(), t.duplicates()), (0, 0));
        let l = t.latency();
        assert_eq!(l.count, 3 * WINDOW + 17);
        assert_eq!(l.min_ns, 1000);
        assert!((1098..=1100).contains(&l.max_ns), "{l:?}");
        assert!((1048..=1051).contains(&l.p50_ns), "{l:?}");
    }
}
