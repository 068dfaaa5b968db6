//! `queue encryption`: queued messages and envelopes are stored sealed with AES-256-GCM,
//! in OpenSMTPD's layout (`crypto.c`): one version byte (1), a random 12-byte IV, the
//! ciphertext, the 16-byte tag; the key is the configuration's 32 bytes.
//!
//! As in OpenSMTPD, a message is in clear only while it is being received (in memory, or in
//! `incoming/` for a large one): it is sealed when the transaction is prepared for its
//! commit, before any `250`. Every reader of the queue opens files through
//! [`open_queue_bytes`], which gives the clear text back. The cipher is installed once per
//! process ([`install`]) when the daemon starts with `queue encryption`.
//!
//! A queue file starting with the version byte is sealed: nothing smtpd writes in clear
//! starts with byte 1 (envelopes start with `version:`, messages with smtpd's own
//! `Received:` line). Files written in clear before encryption was turned on are still
//! read; a sealed file without a key, or with another key, is an error, never treated as
//! clear text.

use std::io;
use std::sync::OnceLock;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// The first byte of a sealed file.
pub const VERSION: u8 = 1;
/// Bytes of the tag at the end of a sealed file.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key for the queue.
pub struct Cipher(LessSafeKey);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(…)")
    }
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Cipher {
        // A 32-byte key is always valid for AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!());
        Cipher(LessSafeKey::new(unbound))
    }

    /// `version | iv | ciphertext | tag`.
    pub fn seal(&self, plain: &[u8]) -> io::Result<Vec<u8>> {
        let mut iv = [0u8; NONCE_LEN];
        getrandom::fill(&mut iv).map_err(|e| io::Error::other(format!("random: {e}")))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&iv);
        let mut body = plain.to_vec();
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut body)
            .map_err(|_| io::Error::other("encryption failed"))?;
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The clear text of a sealed file; an error if it was not sealed with this key or was
    /// changed.
    pub fn open(&self, sealed: &[u8]) -> io::Result<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(io::Error::other("not a sealed queue file"));
        }
        let mut iv = [0u8; NONCE_LEN];
        iv.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .0
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut body)
            .map_err(|_| {
                io::Error::other("cannot decrypt queue file: wrong queue key, or damaged file")
            })?;
        let n = plain.len();
        body.truncate(n);
        Ok(body)
    }
}

static CIPHER: OnceLock<Cipher> = OnceLock::new();

/// Makes `cipher` the queue's for the rest of the process; only the first call counts.
pub fn install(cipher: Cipher) -> bool {
    CIPHER.set(cipher).is_ok()
}

/// The queue's cipher, with `queue encryption`.
pub fn active() -> Option<&'static Cipher> {
    CIPHER.get()
}

/// Is this a sealed queue file?
pub fn is_sealed(data: &[u8]) -> bool {
    data.first() == Some(&VERSION)
}

/// Does the queue store files other than as they are (`queue compression`, `queue
/// encryption`)?
pub fn transforms() -> bool {
    active().is_some() || super::compress::enabled()
}

/// What to write to the queue for `plain`: compressed with `queue compression`, then
/// sealed with `queue encryption`; else itself.
pub fn queue_bytes(plain: &[u8]) -> io::Result<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    let stage: Cow<'_, [u8]> = if super::compress::enabled() {
        Cow::Owned(super::compress::compress(plain)?)
    } else {
        Cow::Borrowed(plain)
    };
    match active() {
        Some(c) => c.seal(&stage).map(Cow::Owned),
        None => Ok(stage),
    }
}

/// The clear text of what a queue file holds (unsealed, then uncompressed, as needed).
pub fn open_queue_bytes(data: Vec<u8>) -> io::Result<Vec<u8>> {
    let data = if is_sealed(&data) {
        match active() {
            Some(c) => c.open(&data)?,
            None => {
                return Err(io::Error::other(
                    "encrypted queue file, and no queue encryption key",
                ));
            }
        }
    } else {
        data
    };
    if super::compress::is_compressed(&data) {
        return super::compress::decompress(&data);
    }
    Ok(data)
}

/// Opens a queued message for reading, in clear: the file itself without encryption, else
/// its clear text in an anonymous memory file.
pub fn open_message_file(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let mut file = std::fs::File::open(path)?;
    let mut first = [0u8; 1];
    let n = file.read(&mut first)?;
    if n == 0 || (first[0] != VERSION && first[0] != super::compress::MAGIC[0]) {
        file.rewind()?;
        return Ok(file);
    }
    let mut data = vec![first[0]];
    file.read_to_end(&mut data)?;
    let plain = open_queue_bytes(data)?;
    let mut memory = super::writer::memory_file()?;
    memory.write_all(&plain)?;
    memory.rewind()?;
    Ok(memory)
}

/// The key of `queue encryption KEY`: 32 characters taken as they are, or 64 hex digits.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    if text.len() == 32 {
        key.copy_from_slice(text.as_bytes());
        return Some(key);
    }
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(key);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_open_with_the_key_only() {
        let c = Cipher::new(b"0123456789abcdef0123456789abcdef");
        let sealed = c.seal(b"Received: from x\nhello\n").unwrap();
        assert_eq!(sealed[0], VERSION);
        assert_eq!(sealed.len(), 1 + 12 + 23 + 16);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(c.open(&sealed).unwrap(), b"Received: from x\nhello\n");
        // Same text, fresh IV: another file.
        assert_ne!(c.seal(b"Received: from x\nhello\n").unwrap(), sealed);
        let other = Cipher::new(b"fedcba9876543210fedcba9876543210");
        assert!(other.open(&sealed).is_err());
        let mut changed = sealed.clone();
        changed[20] ^= 1;
        assert!(c.open(&changed).is_err());
        assert!(c.open(&sealed[..20]).is_err());
        assert_eq!(c.open(&c.seal(b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn keys_are_32_characters_or_64_hex_digits() {
        assert_eq!(
            parse_key("0123456789abcdef0123456789abcdef"),
            Some(*b"0123456789abcdef0123456789abcdef")
        );
        let hex = "00ff".repeat(16);
        let k = parse_key(&hex).unwrap();
        assert_eq!((k[0], k[1], k[31]), (0, 0xff, 0xff));
        assert_eq!(parse_key("short"), None);
        assert_eq!(parse_key(&"zz".repeat(32)), None);
    }
}
