//! A reproducible byte stream for transfers: the same bytes at the same positions on both
//! ends, without storing the stream.

use std::sync::Arc;

/// Length of the repeating block: a prime, so no power-of-two-sized loss or reordering
/// of segments can map the stream onto itself.
const BLOCK_BYTES: usize = 1_000_003;

/// The stream: byte `i` is `block[i % BLOCK_BYTES]`, the block made from a seed.
#[derive(Clone, Debug)]
pub struct Pattern {
    block: Arc<[u8]>,
}

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Pattern {
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut block = Vec::with_capacity(BLOCK_BYTES + 8);
        while block.len() < BLOCK_BYTES {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            block.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        block.truncate(BLOCK_BYTES);
        Pattern {
            block: block.into(),
        }
    }

    /// Writes the stream's bytes from position `pos` into `buf`.
    pub fn fill(&self, pos: u64, buf: &mut [u8]) {
        let mut at = (pos % BLOCK_BYTES as u64) as usize;
        let mut done = 0;
        while done < buf.len() {
            let n = (BLOCK_BYTES - at).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.block[at..at + n]);
            done += n;
            at = 0;
        }
    }

    /// The first `len_bytes` of the stream.
    pub fn bytes(&self, len_bytes: usize) -> Vec<u8> {
        let mut v = vec![0; len_bytes];
        self.fill(0, &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_at_any_position_matches_the_whole() {
        let p = Pattern::new(7);
        let whole = p.bytes(2 * BLOCK_BYTES + 100);
        for pos in [0, 1, BLOCK_BYTES - 3, BLOCK_BYTES, 2 * BLOCK_BYTES - 1] {
            let mut part = [0u8; 50];
            p.fill(pos as u64, &mut part);
            assert_eq!(&part[..], &whole[pos..pos + 50], "at {pos}");
        }
        assert_ne!(Pattern::new(8).bytes(64), p.bytes(64));
    }
}
