//! The frame checksum `dmabrokersink checksum=true` puts in each frame's
//! ring entry and `dmabrokersrc verify=true` checks: a 64-bit
//! multiply-xorshift hash over the frame's bytes (four independent lanes of
//! 8-byte words, so it runs near memory bandwidth). It detects torn or
//! foreign frames; it is not a cryptographic MAC.

const K: [u64; 4] = [0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F, 0x1656_67B1_9E37_79F9, 0x85EB_CA77_C2B2_AE63];

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

/// The checksum of `bytes`; never 0 (0 means "no checksum" in an entry).
///
/// ```
/// let a = gstdmabroker::checksum::checksum(b"frame one");
/// assert_ne!(a, gstdmabroker::checksum::checksum(b"frame two"));
/// assert_ne!(a, 0);
/// ```
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut lanes = K;
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *lane = (*lane ^ u64::from_le_bytes(w)).wrapping_mul(K[1]).rotate_left(31);
        }
    }
    let mut tail = [0u8; 32];
    let rest = blocks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    for (lane, word) in lanes.iter_mut().zip(tail.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        *lane = (*lane ^ u64::from_le_bytes(w)).wrapping_mul(K[1]).rotate_left(31);
    }
    let mut h = bytes.len() as u64;
    for lane in lanes {
        h = mix(h ^ lane);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_counts() {
        let mut frame = vec![7u8; 4099];
        let base = super::checksum(&frame);
        for i in [0, 31, 32, 4096, 4098] {
            frame[i] ^= 1;
            assert_ne!(super::checksum(&frame), base, "byte {i}");
            frame[i] ^= 1;
        }
        assert_ne!(super::checksum(&frame[..4098]), base);
    }
}
