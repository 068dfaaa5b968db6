//! Berkeley DB hash files, as makemap(8) writes them (`table NAME db:/path/file.db`).
//!
//! smtpd reads them natively instead of linking the C library: the whole file is scanned once
//! at load time (hash bucket pages, with overflow chains for long items) and its pairs become
//! the table's entries. makemap stores keys and values with their terminating NUL, which is
//! dropped here. B-tree files and encrypted files are refused with a clear message.

use std::collections::BTreeMap;

use super::{LoadError, Loaded};
use crate::config::model::TableKind;

const HASH_MAGIC: u32 = 0x061561;
const P_OVERFLOW: u8 = 7;
const P_HASH_UNSORTED: u8 = 2;
const P_HASH: u8 = 13;
const H_KEYDATA: u8 = 1;
const H_OFFPAGE: u8 = 3;
const PAGE_HEADER: usize = 26;

struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn u32(&self, off: usize) -> Option<u32> {
        let b: [u8; 4] = self.data.get(off..off + 4)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u16(&self, off: usize) -> Option<u16> {
        let b: [u8; 2] = self.data.get(off..off + 2)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
}

/// Read a makemap-built hash database.
pub fn load(path: &str) -> Result<Loaded, LoadError> {
    let data = std::fs::read(path)
        .map_err(|e| LoadError::Open(format!("{path}: {}", crate::config::diag::strerror(&e))))?;
    parse(&data).map_err(|why| LoadError::Format(format!("{path}: {why}")))
}

fn strip_nul(b: &[u8]) -> String {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    String::from_utf8_lossy(b).into_owned()
}

/// Parse the bytes of a hash database.
pub fn parse(data: &[u8]) -> Result<Loaded, String> {
    let le = Reader {
        data,
        big_endian: false,
    };
    let r = match le.u32(12) {
        Some(HASH_MAGIC) => le,
        Some(m) if m.swap_bytes() == HASH_MAGIC => Reader {
            data,
            big_endian: true,
        },
        Some(0x053162) | Some(0x62310500) => {
            return Err(
                "B-tree databases are not supported; rebuild it with makemap -d hash".into(),
            );
        }
        _ => return Err("not a Berkeley DB hash file".into()),
    };
    if data.get(24).copied().unwrap_or(0) != 0 {
        return Err("encrypted databases are not supported".into());
    }
    let pagesize = r.u32(20).ok_or("truncated header")? as usize;
    if !(512..=65536).contains(&pagesize) || !pagesize.is_power_of_two() {
        return Err("invalid page size".into());
    }
    let npages = data.len() / pagesize;
    let mut entries = BTreeMap::new();
    for pg in 1..npages {
        let base = pg * pagesize;
        let page = &data[base..base + pagesize];
        let ptype = page[25];
        if ptype != P_HASH && ptype != P_HASH_UNSORTED {
            continue;
        }
        let n = r.u16(base + 20).ok_or("truncated page")? as usize;
        let mut items: Vec<Vec<u8>> = Vec::with_capacity(n);
        for i in 0..n {
            let off = r.u16(base + PAGE_HEADER + 2 * i).ok_or("truncated page")? as usize;
            let end = if i == 0 {
                pagesize
            } else {
                r.u16(base + PAGE_HEADER + 2 * (i - 1))
                    .ok_or("truncated page")? as usize
            };
            if off >= end || end > pagesize {
                return Err(format!("corrupt page {pg}"));
            }
            let item = &page[off..end];
            match item[0] {
                H_KEYDATA => items.push(item[1..].to_vec()),
                H_OFFPAGE => {
                    let first = r.u32(base + off + 4).ok_or("truncated item")? as usize;
                    let total = r.u32(base + off + 8).ok_or("truncated item")? as usize;
                    items.push(overflow(&r, pagesize, npages, first, total)?);
                }
                _ => return Err("duplicate keys are not supported".into()),
            }
        }
        for pair in items.chunks(2) {
            if let [k, v] = pair {
                entries.insert(strip_nul(k).to_ascii_lowercase(), strip_nul(v));
            }
        }
    }
    Ok(Loaded {
        kind: TableKind::Dynamic,
        entries,
    })
}

fn overflow(
    r: &Reader,
    pagesize: usize,
    npages: usize,
    mut pg: usize,
    total: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(total.min(1 << 20));
    for _ in 0..npages {
        if pg == 0 || pg >= npages {
            break;
        }
        let base = pg * pagesize;
        if r.data[base + 25] != P_OVERFLOW {
            return Err("corrupt overflow chain".into());
        }
        let len = r.u16(base + 22).ok_or("truncated page")? as usize;
        let chunk = r
            .data
            .get(base + PAGE_HEADER..base + PAGE_HEADER + len)
            .ok_or("corrupt overflow page")?;
        out.extend_from_slice(chunk);
        if out.len() >= total {
            break;
        }
        pg = r.u32(base + 16).ok_or("truncated page")? as usize;
    }
    if out.len() != total {
        return Err("corrupt overflow chain".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makemap_list_db() {
        let l = parse(include_bytes!("../../tests/data/list.db")).unwrap();
        assert_eq!(l.entries.keys().collect::<Vec<_>>(), vec!["localhost"]);
    }

    #[test]
    fn makemap_empty_db() {
        assert!(
            parse(include_bytes!("../../tests/data/empty.db"))
                .unwrap()
                .entries
                .is_empty()
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse(b"hello").is_err());
        assert!(parse(&[0u8; 8192]).is_err());
    }
}
