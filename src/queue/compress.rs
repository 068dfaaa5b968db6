//! `queue compression`: queued messages and envelopes are stored gzip-compressed (as
//! OpenSMTPD's `compress_gzip.c` does), before they are sealed with `queue encryption`.
//! A stored file that starts with the gzip magic is compressed: nothing smtpd writes in
//! clear starts with byte 0x1f.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first bytes of a gzip stream.
pub const MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Most bytes a stored file may expand to (far above any message smtpd accepts).
const MAX_EXPANDED: u64 = 1 << 30;

static ON: AtomicBool = AtomicBool::new(false);

/// Turns `queue compression` on for the rest of the process.
pub fn enable() {
    ON.store(true, Ordering::Release);
}

/// Is `queue compression` on?
pub fn enabled() -> bool {
    ON.load(Ordering::Acquire)
}

/// Is this a compressed queue file?
pub fn is_compressed(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

pub fn compress(plain: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 3 + 64),
        flate2::Compression::default(),
    );
    e.write_all(plain)?;
    e.finish()
}

pub fn decompress(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 3);
    flate2::read::GzDecoder::new(data)
        .take(MAX_EXPANDED + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_EXPANDED {
        return Err(io::Error::other("compressed queue file expands too far"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_magic() {
        let text = "Received: from x\n".repeat(100);
        let z = compress(text.as_bytes()).unwrap();
        assert!(is_compressed(&z));
        assert!(z.len() < text.len() / 10);
        assert_eq!(decompress(&z).unwrap(), text.as_bytes());
        assert!(!is_compressed(text.as_bytes()));
        assert!(decompress(b"\x1f\x8bnot gzip").is_err());
    }
}
