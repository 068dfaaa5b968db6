//! Berkeley DB hash files, as makemap(8) writes them (`table NAME db:/path/file.db`).
//!
//! smtpd reads them natively instead of linking the C library: the whole file is scanned once
//! at load time (hash bucket pages, with overflow chains for long items) and its pairs become
//! the table's entries. makemap stores keys and values with their terminating NUL, which is
//! dropped here. B-tree files and encrypted files are refused with a clear message.
//!
//! [`build`] writes such a file (what makemap(8) does), in the on-disk format of Berkeley DB
//! 5.3 that Debian's makemap produces: a metadata page, a power-of-two number of bucket
//! pages each holding its pairs sorted by key, and overflow pages for items larger than a
//! quarter page. The number of buckets is chosen so that every bucket fits on one page;
//! tables too large for that (more than [`MAX_BUCKETS`] pages of buckets) are refused.

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
const P_HASHMETA: u8 = 8;
const HASH_VERSION: u32 = 9;
/// The page size makemap's files have.
pub const PAGE_SIZE: usize = 4096;
/// The most bucket pages [`build`] lays out.
pub const MAX_BUCKETS: usize = 1 << 20;
/// Berkeley DB's check string for the hash function (`CHARKEY`).
const CHARKEY: &[u8] = b"%$sniglet^&\0";
/// An item longer than this goes to overflow pages (`ISBIG`).
const BIG_ITEM: usize = PAGE_SIZE / 4;
/// The size of an off-page item reference (`HOFFPAGE_SIZE`).
const OFFPAGE_SIZE: usize = 12;

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

/// A key and its data as stored (makemap's terminating NUL included).
pub type Pair = (Vec<u8>, Vec<u8>);

/// Parse the bytes of a hash database.
pub fn parse(data: &[u8]) -> Result<Loaded, String> {
    let mut entries = BTreeMap::new();
    for (k, v) in pairs(data)? {
        entries.insert(strip_nul(&k).to_ascii_lowercase(), strip_nul(&v));
    }
    Ok(Loaded {
        kind: TableKind::Dynamic,
        entries,
    })
}

/// The key/data pairs of a hash database as stored (with makemap's terminating NUL), in
/// page order, which is the order a cursor walks them.
pub fn pairs(data: &[u8]) -> Result<Vec<Pair>, String> {
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
    let mut out = Vec::new();
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
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Berkeley DB's default hash function (`__ham_func5`, Fowler/Noll/Vo).
pub fn hash(key: &[u8]) -> u32 {
    key.iter()
        .fold(0u32, |h, b| h.wrapping_mul(16_777_619) ^ u32::from(*b))
}

/// One item as stored on a bucket page.
enum Item<'a> {
    Inline(&'a [u8]),
    /// First overflow page and total length.
    OffPage(u32, u32),
}

impl Item<'_> {
    fn size(&self) -> usize {
        match self {
            Item::Inline(b) => 1 + b.len(),
            Item::OffPage(..) => OFFPAGE_SIZE,
        }
    }
}

fn put_u32(page: &mut [u8], off: usize, v: u32) {
    page[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u16(page: &mut [u8], off: usize, v: u16) {
    page[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// The common page header: not-logged LSN, page number, links, counts, type.
fn page_header(page: &mut [u8], pgno: u32, next: u32, entries: u16, hf: u16, ptype: u8) {
    put_u32(page, 0, 0);
    put_u32(page, 4, 1);
    put_u32(page, 8, pgno);
    put_u32(page, 12, 0);
    put_u32(page, 16, next);
    put_u16(page, 20, entries);
    put_u16(page, 22, hf);
    page[24] = 0;
    page[25] = ptype;
}

/// Write a hash database holding `pairs` (keys and values exactly as stored: makemap adds
/// the terminating NUL). Keys must be distinct. `uid` is the file's unique id.
pub fn build(pairs: &[Pair], uid: [u8; 20]) -> Result<Vec<u8>, String> {
    let mut seen = std::collections::HashSet::new();
    if !pairs.iter().all(|(k, _)| seen.insert(k.as_slice())) {
        return Err("duplicate key".into());
    }
    // Overflow pages of the big items, numbered after the buckets once their count is known.
    let big = |b: &[u8]| b.len() > BIG_ITEM;
    let overflow_pages = |len: usize| len.div_ceil(PAGE_SIZE - PAGE_HEADER).max(1);
    let room = PAGE_SIZE - PAGE_HEADER;
    let pair_size = |k: &[u8], v: &[u8]| {
        let item = |b: &[u8]| if big(b) { OFFPAGE_SIZE } else { 1 + b.len() };
        4 + item(k) + item(v)
    };
    // The fewest buckets (at least two) that give every bucket a single page.
    let mut nbuckets = 2usize;
    let buckets = loop {
        let mut used = vec![0usize; nbuckets];
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); nbuckets];
        let mask = (nbuckets - 1) as u32;
        for (i, (k, v)) in pairs.iter().enumerate() {
            let b = (hash(k) & mask) as usize;
            used[b] += pair_size(k, v);
            members[b].push(i);
        }
        if used.iter().all(|u| *u <= room) {
            break members;
        }
        if nbuckets >= MAX_BUCKETS {
            return Err("too many entries for one page per bucket".into());
        }
        nbuckets *= 2;
    };
    // Overflow chains after the buckets, in the order of the pairs.
    let mut next_free = 1 + nbuckets;
    let mut refs: Vec<[Item; 2]> = Vec::with_capacity(pairs.len());
    let mut chains: Vec<(usize, &[u8])> = Vec::new();
    for (k, v) in pairs {
        let mut pair = [Item::Inline(k), Item::Inline(v)];
        for (slot, bytes) in pair.iter_mut().zip([k.as_slice(), v.as_slice()]) {
            if big(bytes) {
                let len = u32::try_from(bytes.len()).map_err(|_| "item too large")?;
                let first = u32::try_from(next_free).map_err(|_| "database too large")?;
                *slot = Item::OffPage(first, len);
                chains.push((next_free, bytes));
                next_free += overflow_pages(bytes.len());
            }
        }
        refs.push(pair);
    }
    let npages = next_free;
    let last = u32::try_from(npages - 1).map_err(|_| "database too large")?;
    let mut data = vec![0u8; npages * PAGE_SIZE];

    // The metadata page.
    {
        let m = &mut data[..PAGE_SIZE];
        put_u32(m, 4, 1);
        put_u32(m, 12, HASH_MAGIC);
        put_u32(m, 16, HASH_VERSION);
        put_u32(m, 20, PAGE_SIZE as u32);
        m[25] = P_HASHMETA;
        put_u32(m, 32, last);
        m[52..72].copy_from_slice(&uid);
        let nb = nbuckets as u32;
        put_u32(m, 72, nb - 1);
        put_u32(m, 76, nb - 1);
        put_u32(m, 80, nb / 2 - 1);
        put_u32(m, 84, 0);
        put_u32(
            m,
            88,
            u32::try_from(pairs.len()).map_err(|_| "too many entries")?,
        );
        put_u32(m, 92, hash(CHARKEY));
        // Bucket B is on page B + spares[ceil(log2(B + 1))]: all contiguous from page 1.
        for i in 0..=nbuckets.trailing_zeros() as usize {
            put_u32(m, 96 + 4 * i, 1);
        }
    }

    // Bucket pages: pairs sorted by key, items from the end of the page down.
    for (b, members) in buckets.iter().enumerate() {
        let pgno = b + 1;
        let page = &mut data[pgno * PAGE_SIZE..(pgno + 1) * PAGE_SIZE];
        let mut sorted = members.clone();
        sorted.sort_by(|x, y| pairs[*x].0.cmp(&pairs[*y].0));
        let mut hf = PAGE_SIZE;
        let mut index = 0usize;
        for i in &sorted {
            for item in &refs[*i] {
                hf -= item.size();
                match item {
                    Item::Inline(bytes) => {
                        page[hf] = H_KEYDATA;
                        page[hf + 1..hf + 1 + bytes.len()].copy_from_slice(bytes);
                    }
                    Item::OffPage(first, len) => {
                        page[hf] = H_OFFPAGE;
                        put_u32(page, hf + 4, *first);
                        put_u32(page, hf + 8, *len);
                    }
                }
                put_u16(page, PAGE_HEADER + 2 * index, hf as u16);
                index += 1;
            }
        }
        let entries = u16::try_from(index).map_err(|_| "bucket too full")?;
        page_header(page, pgno as u32, 0, entries, hf as u16, P_HASH);
    }

    // Overflow chains.
    for (first, bytes) in &chains {
        let chunks: Vec<&[u8]> = bytes.chunks(PAGE_SIZE - PAGE_HEADER).collect();
        for (j, chunk) in chunks.iter().enumerate() {
            let pgno = first + j;
            let next = if j + 1 < chunks.len() { pgno + 1 } else { 0 };
            let page = &mut data[pgno * PAGE_SIZE..(pgno + 1) * PAGE_SIZE];
            page_header(
                page,
                pgno as u32,
                next as u32,
                1,
                chunk.len() as u16,
                P_OVERFLOW,
            );
            put_u32(page, 12, if j == 0 { 0 } else { (pgno - 1) as u32 });
            page[PAGE_HEADER..PAGE_HEADER + chunk.len()].copy_from_slice(chunk);
        }
    }
    Ok(data)
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
    fn hash_function_is_berkeley_db_s() {
        // The check value Berkeley DB stores in every hash file's metadata.
        assert_eq!(hash(CHARKEY), 0x5e68_8dd1);
    }

    #[test]
    fn built_files_read_back() {
        let uid = [7u8; 20];
        for n in [0usize, 1, 2, 3, 50, 2000] {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .map(|i| {
                    let k = format!("key{i}\0").into_bytes();
                    let v = if i % 7 == 3 {
                        // Items longer than a quarter page, some over several pages.
                        format!("{}\0", "v".repeat(1000 + i * 13)).into_bytes()
                    } else {
                        format!("value {i}\0").into_bytes()
                    };
                    (k, v)
                })
                .collect();
            let data = build(&pairs, uid).unwrap();
            assert_eq!(data.len() % PAGE_SIZE, 0);
            let mut back = super::pairs(&data).unwrap();
            back.sort();
            let mut want = pairs.clone();
            want.sort();
            assert_eq!(back, want, "{n} pairs");
            let loaded = parse(&data).unwrap();
            assert_eq!(loaded.entries.len(), n);
        }
        let big_key = vec![(vec![b'k'; 5000], b"v\0".to_vec())];
        let data = build(&big_key, uid).unwrap();
        assert_eq!(super::pairs(&data).unwrap(), big_key);
        assert!(
            build(
                &[
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"a".to_vec(), b"2".to_vec())
                ],
                uid
            )
            .is_err()
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse(b"hello").is_err());
        assert!(parse(&[0u8; 8192]).is_err());
    }
}
