//! Text the kernel hands back in fixed-size, NUL-padded byte arrays
//! (`v4l2_capability.driver`, `sync_fence_info.obj_name`, the BPF
//! iterator's exporter names).

/// The bytes of `field` up to its first NUL (all of it when there is
/// none), as UTF-8 with invalid sequences replaced: a driver's name is
/// shown, never trusted.
pub(crate) fn nul_terminated(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::nul_terminated;

    #[test]
    fn stops_at_the_first_nul_or_the_end() {
        assert_eq!(nul_terminated(b"vivid\0\0\0"), "vivid");
        assert_eq!(nul_terminated(b"sw_sync"), "sw_sync");
        assert_eq!(nul_terminated(b"\0left"), "");
        assert_eq!(nul_terminated(b"a\xffb\0"), "a\u{fffd}b");
    }
}
