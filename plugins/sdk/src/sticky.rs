//! Turning a session key, or a host random number, into a point in [0, 1) for weighted splits.
//!
//! A split sends a request to the canary when its point is below the canary's
//! share. A session key always maps to the same point, so its user stays on one
//! side; and raising the share only moves points from stable to canary, never
//! back. For a two-way split this threshold is exact consistent hashing, with
//! no ring to build or keep.

use xxhash_rust::xxh3::xxh3_64;

use crate::host;

/// The stable point of `key` in [0, 1).
///
/// xxh3 is a specified algorithm with fixed output on every platform and
/// release, unlike `std`'s randomly keyed hasher: a user keeps their side
/// across plugin rebuilds, gateway restarts and every gateway replica.
pub fn sticky_fraction(key: &str) -> f64 {
    unit_interval(xxh3_64(key.as_bytes()))
}

/// A fresh point in [0, 1) from the host's random number generator.
pub fn random_fraction() -> f64 {
    unit_interval(host::random())
}

/// Maps 64 random bits to [0, 1) using the top 53, all an `f64` mantissa holds,
/// so every value is exact and 1.0 is unreachable.
fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use alloc::format;

    use super::*;

    #[test]
    fn same_key_same_point() {
        assert_eq!(sticky_fraction("user-42"), sticky_fraction("user-42"));
        assert_ne!(sticky_fraction("user-42"), sticky_fraction("user-43"));
    }

    #[test]
    fn points_are_stable_across_builds() {
        // A changed hash would move users between sides on upgrade.
        assert_eq!(xxh3_64(b"user-42"), 5_836_184_775_705_692_621);
        assert_eq!(unit_interval(0), 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
    }

    #[test]
    fn keys_spread_evenly() {
        let below_tenth = (0..10_000)
            .filter(|i| sticky_fraction(&format!("session-{i}")) < 0.1)
            .count();
        assert!((900..1100).contains(&below_tenth), "{below_tenth}");
    }

    #[test]
    fn random_points_are_in_range() {
        host::seed_random(1);
        assert!((0..1000)
            .map(|_| random_fraction())
            .all(|p| (0.0..1.0).contains(&p)));
    }
}
