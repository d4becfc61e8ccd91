//! The fixed per-entry jitter offset: a pure function of the entry name, so every replica,
//! every restart and every build spreads a herd of `0 * * * *` entries the same way.
//!
//! FNV-1a 64 is written out rather than taken from `std`: `DefaultHasher` is explicitly
//! allowed to change between Rust releases, which would move every entry's fire time on a
//! toolchain upgrade.

use std::time::Duration;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// The offset added to every fire time of the entry `name`: whole milliseconds, strictly less
/// than `max` (zero when `max` is under a millisecond).
#[must_use]
pub fn jitter_offset(name: &str, max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(fnv1a64(name.as_bytes()) % max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn same_name_same_offset_and_pinned() {
        let max = Duration::from_secs(60);
        assert_eq!(
            jitter_offset("nightly-report", max),
            jitter_offset("nightly-report", max)
        );
        // Pinned: a change here moves users' fire times and must be deliberate.
        let pinned = Duration::from_millis(fnv1a64(b"nightly-report") % 60_000);
        assert_eq!(jitter_offset("nightly-report", max), pinned);
        assert_eq!(
            jitter_offset("a", Duration::from_secs(1)),
            Duration::from_millis(0xaf63_dc4c_8601_ec8c % 1000)
        );
    }

    #[test]
    fn bounded_and_zero_without_a_bound() {
        assert_eq!(jitter_offset("x", Duration::ZERO), Duration::ZERO);
        assert_eq!(
            jitter_offset("x", Duration::from_micros(999)),
            Duration::ZERO
        );
        for i in 0..1000 {
            let max = Duration::from_millis(1 + i);
            let off = jitter_offset(&format!("entry-{i}"), max);
            assert!(off < max);
            assert_eq!(off.subsec_nanos() % 1_000_000, 0, "millisecond resolution");
        }
    }

    #[test]
    fn spreads_names_across_the_range() {
        let max = Duration::from_secs(60);
        let offsets: Vec<_> = (0..1000)
            .map(|i| jitter_offset(&format!("report-{i}"), max))
            .collect();
        let distinct: HashSet<_> = offsets.iter().collect();
        assert!(
            distinct.len() > 950,
            "only {} distinct offsets",
            distinct.len()
        );
        // Every 6-second bucket of the minute gets a fair share (100 expected).
        let mut buckets = [0u32; 10];
        for off in &offsets {
            buckets[usize::try_from(off.as_secs() / 6).unwrap()] += 1;
        }
        assert!(
            buckets.iter().all(|n| (60..=140).contains(n)),
            "{buckets:?}"
        );
    }
}
