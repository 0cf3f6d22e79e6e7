//! Ownership epochs, unique cluster-wide (REFERENCE 4.6): an epoch is the ordered pair
//! (counter, route tag) packed into a `u64`, counter high. Two nodes minting "the next
//! epoch" from the same copy mint different ones, so a tie can never hide two different
//! copies at one (epoch, version); among claims decided by a majority, voters promise
//! strictly rising epochs, so no two winning claims share one either.

/// Low bits of an epoch: the minting node's route tag.
pub(super) const TAG_BITS: u32 = 16;

/// 64-bit FNV-1a of `bytes`, finished with a murmur3-style avalanche. Hand-written: stable
/// across nodes and versions, which `std`'s hasher does not promise.
pub(crate) fn hash64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // FNV's low bits mix poorly for short suffixes.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The tag a node with route `route` puts in the epochs it mints.
pub fn tag(route: &str) -> u64 {
    hash64(route.bytes()) & ((1 << TAG_BITS) - 1)
}

/// The epoch of a session this node creates.
pub(super) fn first(tag: u64) -> u64 {
    (1 << TAG_BITS) | tag
}

/// The lowest epoch of this node above `after`.
pub fn next(after: u64, tag: u64) -> u64 {
    (((after >> TAG_BITS) + 1) << TAG_BITS) | tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_rise_and_differ_by_minter() {
        let (a, b) = (tag("node1"), tag("node2"));
        assert_ne!(a, b);
        let e = first(a);
        assert!(next(e, a) > e && next(e, b) > e);
        assert_ne!(next(e, a), next(e, b));
        // An epoch of an older version (1, 2, ...) is below every minted one.
        assert!(next(2, a) > 2 && first(a) > 1);
        assert!(next(next(e, b), a) > next(e, b));
    }
}
