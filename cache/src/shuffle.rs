//! Byte shuffling (Blosc's filter): byte b of every element goes into plane b,
//! so the high bytes of 16-bit CT (mostly equal) compress well.

/// Plane-major copy of `bytes` whose elements are `size` bytes wide.
pub fn shuffle(bytes: &[u8], size: usize) -> Vec<u8> {
    if size <= 1 {
        return bytes.to_vec();
    }
    let n = bytes.len() / size;
    let mut out = vec![0u8; bytes.len()];
    for (i, elem) in bytes.chunks_exact(size).enumerate() {
        for (b, &v) in elem.iter().enumerate() {
            out[b * n + i] = v;
        }
    }
    out
}

/// Inverse of [`shuffle`].
pub fn unshuffle(bytes: &[u8], size: usize) -> Vec<u8> {
    if size <= 1 {
        return bytes.to_vec();
    }
    let n = bytes.len() / size;
    let mut out = vec![0u8; bytes.len()];
    for (b, plane) in bytes.chunks_exact(n.max(1)).take(size).enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            out[i * size + b] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_groups_bytes_and_round_trips() {
        let v: Vec<u8> = vec![1, 2, 3, 4, 5, 6];
        assert_eq!(shuffle(&v, 2), vec![1, 3, 5, 2, 4, 6]);
        assert_eq!(unshuffle(&shuffle(&v, 2), 2), v);
        assert_eq!(unshuffle(&shuffle(&v, 3), 3), v);
        assert_eq!(shuffle(&v, 1), v);
        let long: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert_eq!(unshuffle(&shuffle(&long, 4), 4), long);
    }
}
