//! SHA-256 helpers shared by the relay and the client.
//!
//! Both ends hash every file while its bytes stream past, so the hash costs no extra pass over
//! the data. The one exception is a resume: the bytes already transferred are read back once and
//! hashed, to bring the hasher to where it was when the transfer stopped.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Feeds the next `len` bytes of `reader` into `hasher`. Fails if fewer than `len` bytes are there.
pub fn hash_prefix<R: Read>(reader: &mut R, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        reader.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into a hash.
pub fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hash_equals_hash_of_the_prefix() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut hasher = Sha256::new();
        hash_prefix(&mut &data[..], 300_001, &mut hasher).unwrap();
        assert_eq!(hasher.finalize(), Sha256::digest(&data[..300_001]));
        let mut short = Sha256::new();
        assert!(hash_prefix(&mut &data[..10], 11, &mut short).is_err());
    }

    #[test]
    fn hex_round_trips() {
        let h: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(hex(&h[..2]), "ba78");
        assert_eq!(unhex("zz"), None);
    }
}
