//! The demo's unit tests.

use super::histogram::LatencyHistogram;
use super::pattern::{checksum, flipped_checksum, test_pattern, Checksum};
use super::*;

#[test]
fn sizes_parse() {
    assert_eq!(parse_wh("1920x1080"), Ok((1920, 1080)));
    assert!(parse_wh("1921x1080").is_err());
    assert!(parse_wh("0x0").is_err());
    assert!(parse_wh("axb").is_err());
    assert!(parse_wh("1920").is_err());
}

#[test]
fn through_parses() {
    assert_eq!(parse_through("vulkan"), Ok(Through::Vulkan(0)));
    assert_eq!(parse_through("vulkan:2"), Ok(Through::Vulkan(2)));
    assert!(parse_through("vulkan:x").unwrap_err().contains("vulkan:N"));
    assert!(parse_through("opencl").unwrap_err().contains("vulkan or vulkan:N"));
}

#[test]
fn histogram_percentiles_are_close_in_fixed_memory() {
    let mut h = LatencyHistogram::new();
    assert_eq!(h.p50_p99(), (0, 0));
    let mut exact: Vec<u64> = (1..=10_000u64).map(|i| i * i % 1_000_003 + 7).collect();
    for &v in &exact {
        h.record(v);
    }
    let (p50, p99) = h.p50_p99();
    let (e50, e99) = crate::command::measure::p50_p99(&mut exact);
    for (got, want) in [(p50, e50), (p99, e99)] {
        let err = got.abs_diff(want) as f64 / want as f64;
        assert!(err < 1.0 / 16.0, "{got} vs {want}");
    }
    // Small values are exact; extreme ones neither panic nor overflow.
    let mut small = LatencyHistogram::new();
    for v in [3, 3, 3, 9] {
        small.record(v);
    }
    assert_eq!(small.p50_p99(), (3, 9));
    let mut big = LatencyHistogram::new();
    big.record(u64::MAX);
    big.record(0);
    assert!(big.quantile(1.0) >= u64::MAX - u64::MAX / 16, "{}", big.quantile(1.0));
    assert_eq!(big.quantile(0.0), 0);
    big.clear();
    assert_eq!(big.p50_p99(), (0, 0));
}

#[test]
fn pattern_differs_per_frame() {
    let mut a = vec![0u8; 64 * 32 * 3 / 2];
    let mut b = a.clone();
    test_pattern(&mut a, 64, 32, 1);
    test_pattern(&mut b, 64, 32, 2);
    assert_ne!(checksum(&a), checksum(&b));
}

#[test]
fn checksum_in_pieces_equals_checksum_of_the_whole() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    for cuts in [vec![0, 1000], vec![0, 3, 11, 12, 500, 997, 1000], vec![0, 8, 16, 1000], vec![0, 999, 1000]] {
        let mut c = Checksum::new();
        for w in cuts.windows(2) {
            c.update(&data[w[0]..w[1]]);
        }
        assert_eq!(c.finish(), checksum(&data), "{cuts:?}");
    }
    // A flipped 4-row frame with 2 bytes of padding per 6-byte row.
    let (pitch, rows, row) = (8usize, 4usize, 6usize);
    let frame: Vec<u8> = (0..(pitch * rows) as u8).collect();
    let mut flipped = vec![0u8; pitch * rows];
    for y in 0..rows {
        flipped[y * pitch..][..row].copy_from_slice(&frame[(rows - 1 - y) * pitch..][..row]);
    }
    assert_eq!(flipped_checksum(&frame, pitch, rows, row), checksum(&flipped));
}
