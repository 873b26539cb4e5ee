//! The build log cap, one rule for the worker's `build.log` and the
//! master's live copy: past the cap a log is cut with one marker line and
//! nothing more is kept; the build goes on. A log that fills the cap
//! exactly is kept whole and gets its marker with the next byte.

/// The line that ends a cut log.
pub fn marker(cap: u64) -> String {
    format!("\n[kiln: log cut here: it reached the cap of {cap} bytes; the build goes on]\n")
}

/// With `written` bytes of a log kept so far under `cap` (0: no cap), what
/// to keep of the next chunk `data`: `None` to keep it all, or the part
/// that fits followed by the marker (the log is then cut).
pub fn cut(cap: u64, written: u64, data: &[u8]) -> Option<Vec<u8>> {
    if cap == 0 || written.saturating_add(data.len() as u64) <= cap {
        return None;
    }
    let room = cap.saturating_sub(written).min(data.len() as u64) as usize;
    let mut kept = data[..room].to_vec();
    kept.extend_from_slice(marker(cap).as_bytes());
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_that_fits_is_kept_whole() {
        assert_eq!(cut(10, 0, b"0123456789"), None);
        assert_eq!(cut(0, 1 << 40, b"no cap"), None);
    }

    #[test]
    fn a_chunk_across_the_cap_is_cut_inside_with_the_marker() {
        let kept = cut(10, 6, b"abcdefgh").unwrap();
        assert!(kept.starts_with(b"abcd\n[kiln: log cut here"));
        assert!(kept.ends_with(b"cap of 10 bytes; the build goes on]\n"));
    }

    #[test]
    fn a_log_that_filled_the_cap_exactly_gets_the_marker_with_the_next_byte() {
        assert_eq!(cut(10, 10, b"x").unwrap(), marker(10).into_bytes());
    }
}
