//! The raw layout of an rpm file (lead, signature header, main header,
//! payload), checked byte by byte before any of it reaches the `rpm` crate.
//!
//! The checks are rpm's own (`lib/header.c`: `hdrblobRead`,
//! `hdrblobVerifyLengths`, `hdrblobVerifyRegion`, `hdrblobVerifyInfo`,
//! `dataLength`), with the same limits: at most 65,535 entries and a data
//! store under 256 MiB in the main header, 32 entries and 64 MiB in the
//! signature header, every entry of a known type, its data aligned, inside
//! the store, not overlapping the previous entry's, and its strings ended
//! inside the store. A header that passes cannot make a reader allocate more
//! than the bytes it holds.
//!
//! Reading is bounded too: nothing past the main header is read into
//! memory, and no read is larger than what the file still holds.

use std::io::Read;
use std::ops::Range;

use thiserror::Error;

pub const LEAD_SIZE: usize = 96;
pub const LEAD_MAGIC: [u8; 4] = [0xed, 0xab, 0xee, 0xdb];
/// The header magic with its four reserved (zero) bytes, as rpm compares it.
pub const HEADER_MAGIC: [u8; 8] = [0x8e, 0xad, 0xe8, 0x01, 0, 0, 0, 0];
/// Magic, reserved bytes, entry count, store size.
pub const INTRO_SIZE: usize = 16;
pub const ENTRY_SIZE: usize = 16;

/// rpm's `HEADER_TAGS_MAX`.
pub const MAX_ENTRIES: u32 = 0x0000_ffff;
/// rpm's `HEADER_DATA_MAX` (256 MiB - 1).
pub const MAX_STORE: u32 = 0x0fff_ffff;
/// rpm's limits for the signature header (`hdrblobVerifyLengths`).
pub const MAX_SIG_ENTRIES: u32 = 32;
pub const MAX_SIG_STORE: u32 = 64 * 1024 * 1024;
/// rpm's `headerMaxbytes`: a header blob (counts, index and store) is
/// smaller than this.
pub const MAX_HEADER_BYTES: u64 = 256 * 1024 * 1024;
/// rpm's `HEADER_ARRAY_MAX`: items of one entry, except BIN data.
pub const MAX_ARRAY_ITEMS: u32 = 0x000f_ffff;

/// Tags below this are reserved for header regions (rpm's `hdrchkTag`).
const HEADER_I18NTABLE: u32 = 100;
pub const RPMTAG_HEADERSIGNATURES: u32 = 62;
pub const RPMTAG_HEADERIMMUTABLE: u32 = 63;
const RPMTAG_HEADERIMAGE: u32 = 61;

/// Signature header tags.
pub const RPMSIGTAG_SIZE: u32 = 1000;
pub const RPMSIGTAG_LONGSIZE: u32 = 270;
pub const RPMSIGTAG_SHA256: u32 = 273;
/// Main header tags.
pub const RPMTAG_PAYLOADDIGEST: u32 = 5092;
pub const RPMTAG_PAYLOADDIGESTALGO: u32 = 5093;

pub const TYPE_NULL: u32 = 0;
pub const TYPE_CHAR: u32 = 1;
pub const TYPE_INT8: u32 = 2;
pub const TYPE_INT16: u32 = 3;
pub const TYPE_INT32: u32 = 4;
pub const TYPE_INT64: u32 = 5;
pub const TYPE_STRING: u32 = 6;
pub const TYPE_BIN: u32 = 7;
pub const TYPE_STRING_ARRAY: u32 = 8;
pub const TYPE_I18NSTRING: u32 = 9;

/// rpm's name of a data type.
pub fn type_name(t: u32) -> &'static str {
    match t {
        TYPE_NULL => "NULL",
        TYPE_CHAR => "CHAR",
        TYPE_INT8 => "INT8",
        TYPE_INT16 => "INT16",
        TYPE_INT32 => "INT32",
        TYPE_INT64 => "INT64",
        TYPE_STRING => "STRING",
        TYPE_BIN => "BIN",
        TYPE_STRING_ARRAY => "STRING_ARRAY",
        TYPE_I18NSTRING => "I18NSTRING",
        _ => "unknown",
    }
}

/// Bytes per item of a fixed-size type (None for the string types).
fn type_size(t: u32) -> Option<u64> {
    match t {
        TYPE_NULL => Some(0),
        TYPE_CHAR | TYPE_INT8 | TYPE_BIN => Some(1),
        TYPE_INT16 => Some(2),
        TYPE_INT32 => Some(4),
        TYPE_INT64 => Some(8),
        _ => None,
    }
}

fn type_align(t: u32) -> u32 {
    match t {
        TYPE_INT16 => 2,
        TYPE_INT32 => 4,
        TYPE_INT64 => 8,
        _ => 1,
    }
}

/// Which of the two headers of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Signature,
    Main,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::Signature => "signature header",
            Which::Main => "main header",
        })
    }
}

impl Which {
    fn limits(self) -> (u32, u32) {
        match self {
            Which::Signature => (MAX_SIG_ENTRIES, MAX_SIG_STORE),
            Which::Main => (MAX_ENTRIES, MAX_STORE),
        }
    }

    fn region_tag(self) -> u32 {
        match self {
            Which::Signature => RPMTAG_HEADERSIGNATURES,
            Which::Main => RPMTAG_HEADERIMMUTABLE,
        }
    }
}

#[derive(Debug, Error)]
pub enum HeaderError {
    #[error("not an rpm package: the file does not start with the rpm lead magic (ed ab ee db)")]
    LeadMagic,
    #[error("malformed rpm lead: {0}")]
    Lead(String),
    #[error(
        "truncated rpm: the file ends inside the {what} ({have} bytes, at least {need} needed)"
    )]
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    #[error("malformed rpm header: the {which} does not start with the header magic (8e ad e8 01 and four zero bytes)")]
    Magic { which: Which },
    #[error(
        "malformed rpm header: the {which} declares {count} entries (rpm allows {min} to {max})"
    )]
    EntryCount {
        which: Which,
        count: u32,
        min: u32,
        max: u32,
    },
    #[error(
        "malformed rpm header: the {which} declares a {size}-byte data store (rpm allows at most {max})"
    )]
    StoreSize { which: Which, size: u32, max: u32 },
    #[error("malformed rpm header: the {which} region: {problem}")]
    Region { which: Which, problem: String },
    #[error("malformed rpm header: {which} entry {index} (tag {tag}) {problem}")]
    Entry {
        which: Which,
        index: u32,
        tag: u32,
        problem: String,
    },
    #[error("reading the package: {0}")]
    Io(#[from] std::io::Error),
}

/// One index entry, as checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub index: u32,
    pub tag: u32,
    pub kind: u32,
    /// Within the header's data store.
    pub offset: u32,
    pub count: u32,
    /// Bytes of data, from `offset` (strings with their NULs).
    pub len: u32,
}

/// One checked header: where it is in [`Headers::bytes`] and its entries.
#[derive(Debug, Clone)]
pub struct Header {
    pub which: Which,
    /// From the magic to the end of the data store (padding excluded).
    pub range: Range<usize>,
    pub entries: Vec<Entry>,
    /// Entries and store bytes of the immutable region (the whole header
    /// in a package file): what rpm's header digest covers.
    pub region: (u32, u32),
}

/// The lead and both headers of a package, checked; the payload follows.
#[derive(Debug, Clone)]
pub struct Headers {
    /// The file from its first byte to the end of the main header.
    pub bytes: Vec<u8>,
    pub signature: Header,
    pub main: Header,
}

impl Headers {
    /// Where the payload starts in the file.
    pub fn payload_offset(&self) -> u64 {
        self.main.range.end as u64
    }

    /// The main header's bytes as in the file (magic included).
    pub fn main_bytes(&self) -> &[u8] {
        &self.bytes[self.main.range.clone()]
    }

    pub fn view(&self, which: Which) -> View<'_> {
        let h = match which {
            Which::Signature => &self.signature,
            Which::Main => &self.main,
        };
        View {
            header: h,
            bytes: &self.bytes[h.range.clone()],
        }
    }
}

/// Read access to one checked header's entries.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    header: &'a Header,
    /// From the magic to the end of the store.
    bytes: &'a [u8],
}

impl<'a> View<'a> {
    pub fn entries(&self) -> &'a [Entry] {
        &self.header.entries
    }

    pub fn find(&self, tag: u32) -> Option<&'a Entry> {
        self.header.entries.iter().find(|e| e.tag == tag)
    }

    fn store(&self) -> &'a [u8] {
        let il = self.header.entries.len();
        &self.bytes[INTRO_SIZE + il * ENTRY_SIZE..]
    }

    /// Where the data store starts, relative to [`Header::range`].
    pub fn store_offset(&self) -> usize {
        INTRO_SIZE + self.header.entries.len() * ENTRY_SIZE
    }

    /// The checked data of an entry.
    pub fn data(&self, e: &Entry) -> &'a [u8] {
        let start = e.offset as usize;
        &self.store()[start..start + e.len as usize]
    }

    /// The first string of a STRING, STRING_ARRAY or I18NSTRING entry.
    pub fn string(&self, tag: u32) -> Option<&'a [u8]> {
        let e = self.find(tag)?;
        if !matches!(e.kind, TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING) {
            return None;
        }
        let d = self.data(e);
        let nul = d.iter().position(|b| *b == 0)?;
        Some(&d[..nul])
    }

    /// The first item of an integer entry, widened.
    pub fn number(&self, tag: u32) -> Option<u64> {
        let e = self.find(tag)?;
        let d = self.data(e);
        match e.kind {
            TYPE_INT8 | TYPE_CHAR => d.first().map(|b| u64::from(*b)),
            TYPE_INT16 => Some(u64::from(u16::from_be_bytes(d.get(..2)?.try_into().ok()?))),
            TYPE_INT32 => Some(u64::from(u32::from_be_bytes(d.get(..4)?.try_into().ok()?))),
            TYPE_INT64 => Some(u64::from_be_bytes(d.get(..8)?.try_into().ok()?)),
            _ => None,
        }
    }

    /// The SHA-256 of what rpm's header digests cover
    /// (`hdrblobDigestUpdate`): the magic, the region's entry count and
    /// store size, its entries and its store bytes. For a package's main
    /// header that is the header as written. Lower-case hex.
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let (ril, rdl) = self.header.region;
        let mut h = Sha256::new();
        h.update(HEADER_MAGIC);
        h.update(ril.to_be_bytes());
        h.update(rdl.to_be_bytes());
        h.update(&self.bytes[INTRO_SIZE..INTRO_SIZE + ril as usize * ENTRY_SIZE]);
        let s = self.store_offset();
        h.update(&self.bytes[s..s + rdl as usize]);
        hex::encode(h.finalize())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

/// Append exactly `n` more bytes of `r` to `buf`, after checking that the
/// file (`len` bytes) holds them: memory grows only with bytes that exist.
fn take(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    n: u64,
    len: u64,
    what: &'static str,
) -> Result<(), HeaderError> {
    let need = buf.len() as u64 + n;
    if need > len {
        return Err(HeaderError::Truncated {
            what,
            need,
            have: len,
        });
    }
    let got = r.take(n).read_to_end(buf)? as u64;
    if got != n {
        return Err(HeaderError::Truncated {
            what,
            need,
            have: buf.len() as u64,
        });
    }
    Ok(())
}

fn check_lead(lead: &[u8]) -> Result<(), HeaderError> {
    if lead[..4] != LEAD_MAGIC {
        return Err(HeaderError::LeadMagic);
    }
    let major = lead[4];
    if !(3..=4).contains(&major) {
        return Err(HeaderError::Lead(format!(
            "format version {major} (rpm reads 3 and 4)"
        )));
    }
    let sigtype = u16::from_be_bytes([lead[78], lead[79]]);
    if sigtype != 5 {
        return Err(HeaderError::Lead(format!(
            "signature type {sigtype} (rpm reads only 5, a header-style signature)"
        )));
    }
    Ok(())
}

/// Read and check one header starting at the reader's position (which is
/// `buf.len()` in the file).
fn read_header(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    len: u64,
    which: Which,
) -> Result<Header, HeaderError> {
    let what = match which {
        Which::Signature => "signature header",
        Which::Main => "main header",
    };
    let start = buf.len();
    take(r, buf, INTRO_SIZE as u64, len, what)?;
    if buf[start..start + 8] != HEADER_MAGIC {
        return Err(HeaderError::Magic { which });
    }
    let il = be32(buf, start + 8);
    let dl = be32(buf, start + 12);
    let (max_il, max_dl) = which.limits();
    if il < 1 || il > max_il {
        return Err(HeaderError::EntryCount {
            which,
            count: il,
            min: 1,
            max: max_il,
        });
    }
    if dl > max_dl {
        return Err(HeaderError::StoreSize {
            which,
            size: dl,
            max: max_dl,
        });
    }
    let rest = u64::from(il) * ENTRY_SIZE as u64 + u64::from(dl);
    if 8 + rest >= MAX_HEADER_BYTES {
        return Err(HeaderError::StoreSize {
            which,
            size: dl,
            max: (MAX_HEADER_BYTES - 9 - u64::from(il) * ENTRY_SIZE as u64) as u32,
        });
    }
    take(r, buf, rest, len, what)?;
    let (entries, region) = check_entries(which, &buf[start..])?;
    Ok(Header {
        which,
        range: start..buf.len(),
        entries,
        region,
    })
}

fn raw_entry(bytes: &[u8], i: u32) -> (u32, u32, u32, u32) {
    let at = INTRO_SIZE + i as usize * ENTRY_SIZE;
    (
        be32(bytes, at),
        be32(bytes, at + 4),
        be32(bytes, at + 8),
        be32(bytes, at + 12),
    )
}

/// rpm's `hdrblobVerifyRegion` and `hdrblobVerifyInfo` on one header blob
/// (from the magic to the end of the store). Returns the entries and the
/// region's (entries, store bytes).
fn check_entries(which: Which, bytes: &[u8]) -> Result<(Vec<Entry>, (u32, u32)), HeaderError> {
    let il = be32(bytes, 8);
    let dl = be32(bytes, 12);
    let store = &bytes[INTRO_SIZE + il as usize * ENTRY_SIZE..];
    debug_assert_eq!(store.len(), dl as usize);
    let mut entries = Vec::with_capacity(il as usize);

    // The region tag, when the first entry is one.
    let (first_tag, first_type, first_off, first_count) = raw_entry(bytes, 0);
    let mut region: Option<(u32, u32)> = None;
    if first_tag == which.region_tag() {
        let bad = |problem: String| HeaderError::Region { which, problem };
        if first_type != TYPE_BIN || first_count != ENTRY_SIZE as u32 {
            return Err(bad(format!(
                "the region tag has type {} and {first_count} items (BIN, 16 expected)",
                type_name(first_type)
            )));
        }
        let trailer_end = u64::from(first_off) + ENTRY_SIZE as u64;
        if first_off as i32 <= -1 || trailer_end > u64::from(dl) {
            return Err(bad(format!(
                "its trailer at offset {} lies outside the {dl}-byte data store",
                first_off as i32
            )));
        }
        let t = first_off as usize;
        let (ttag, ttype, toff, tcount) = (
            be32(store, t),
            be32(store, t + 4),
            be32(store, t + 8),
            be32(store, t + 12),
        );
        let ttag = if which == Which::Signature && ttag == RPMTAG_HEADERIMAGE {
            RPMTAG_HEADERSIGNATURES
        } else {
            ttag
        };
        if ttag != first_tag || ttype != TYPE_BIN || tcount != ENTRY_SIZE as u32 {
            return Err(bad(format!(
                "the trailer says tag {ttag} type {} count {tcount}",
                type_name(ttype)
            )));
        }
        let size = -i64::from(toff as i32);
        if size <= 0 || size % ENTRY_SIZE as i64 != 0 || size / ENTRY_SIZE as i64 > i64::from(il) {
            return Err(bad(format!(
                "the trailer claims {size} bytes of index for {il} entries"
            )));
        }
        region = Some(((size / ENTRY_SIZE as i64) as u32, trailer_end as u32));
        entries.push(Entry {
            index: 0,
            tag: first_tag,
            kind: first_type,
            offset: first_off,
            count: first_count,
            len: ENTRY_SIZE as u32,
        });
    }
    let skip = u32::from(region.is_some());
    let rdl = region.map(|(_, rdl)| rdl);

    let mut end: u64 = 0;
    for i in skip..il {
        let (tag, kind, off, count) = raw_entry(bytes, i);
        let bad = |problem: String| HeaderError::Entry {
            which,
            index: i,
            tag,
            problem,
        };
        if kind > TYPE_I18NSTRING {
            return Err(bad(format!("has unknown data type {kind}")));
        }
        let tname = type_name(kind);
        if kind == TYPE_NULL {
            return Err(bad("has the NULL data type, which holds no data".into()));
        }
        if tag < HEADER_I18NTABLE {
            return Err(bad(format!(
                "uses tag number {tag}, reserved for header regions"
            )));
        }
        if off as i32 <= -1 || off > dl {
            return Err(bad(format!(
                "points at offset {}, outside the {dl}-byte data store",
                off as i32
            )));
        }
        if off % type_align(kind) != 0 {
            return Err(bad(format!(
                "points at offset {off}, not aligned to {} bytes for its {tname} data",
                type_align(kind)
            )));
        }
        if count == 0 {
            return Err(bad(format!("declares 0 {tname} items")));
        }
        if count > dl {
            return Err(bad(format!(
                "declares {count} {tname} items, more than the {dl}-byte data store holds"
            )));
        }
        if kind != TYPE_BIN && count > MAX_ARRAY_ITEMS {
            return Err(bad(format!(
                "declares {count} {tname} items, more than rpm's limit of {MAX_ARRAY_ITEMS}"
            )));
        }
        if u64::from(off) < end {
            return Err(bad(format!(
                "has its data at offset {off}, inside the previous entry's (which ends at {end})"
            )));
        }
        let from = &store[off as usize..];
        let len: u64 = match type_size(kind) {
            Some(size) => {
                let need = size * u64::from(count);
                if need > from.len() as u64 {
                    return Err(bad(format!(
                        "declares {count} {tname} items ({need} bytes from offset {off}), \
                         more than the {dl}-byte data store holds"
                    )));
                }
                need
            }
            None => {
                if kind == TYPE_STRING && count != 1 {
                    return Err(bad(format!(
                        "is a STRING with {count} items (rpm requires 1)"
                    )));
                }
                let mut at = 0usize;
                for n in 0..count {
                    match from[at..].iter().position(|b| *b == 0) {
                        Some(nul) => at += nul + 1,
                        None => {
                            return Err(bad(format!(
                                "declares {count} {tname} items but only {n} strings end \
                                 inside the {dl}-byte data store"
                            )))
                        }
                    }
                }
                at as u64
            }
        };
        end = u64::from(off) + len;
        if let Some(rdl) = rdl {
            let trailer = u64::from(rdl) - ENTRY_SIZE as u64;
            if end > trailer && u64::from(off) < u64::from(rdl) {
                return Err(bad("has data overlapping the header region trailer".into()));
            }
        }
        entries.push(Entry {
            index: i,
            tag,
            kind,
            offset: off,
            count,
            len: len as u32,
        });
    }
    Ok((entries, region.unwrap_or((il, dl))))
}

/// Read and check the lead and both headers of a package of `len` bytes
/// from `r` (positioned at its start). Leaves `r` at the payload.
pub fn read_headers(r: &mut impl Read, len: u64) -> Result<Headers, HeaderError> {
    let mut buf = Vec::new();
    take(r, &mut buf, LEAD_SIZE as u64, len, "lead")?;
    check_lead(&buf)?;
    let signature = read_header(r, &mut buf, len, Which::Signature)?;
    let pad = (8 - signature.range.len() % 8) % 8;
    take(r, &mut buf, pad as u64, len, "signature header padding")?;
    let main = read_header(r, &mut buf, len, Which::Main)?;
    Ok(Headers {
        bytes: buf,
        signature,
        main,
    })
}

/// The same for a package held in memory.
pub fn parse_headers(data: &[u8]) -> Result<Headers, HeaderError> {
    read_headers(&mut std::io::Cursor::new(data), data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lead, a one-entry signature header and a main header with the
    /// given entries and store.
    pub(crate) fn package(entries: &[(u32, u32, i32, u32)], store: &[u8]) -> Vec<u8> {
        let mut v = LEAD_MAGIC.to_vec();
        v.extend_from_slice(&[3, 0, 0, 1, 0, 1]);
        v.extend_from_slice(&[0; 66]);
        v.extend_from_slice(&[0, 1, 0, 5]);
        v.extend_from_slice(&[0; 16]);
        assert_eq!(v.len(), LEAD_SIZE);
        v.extend_from_slice(&HEADER_MAGIC);
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&4u32.to_be_bytes());
        for w in [RPMSIGTAG_SIZE, TYPE_INT32, 0, 1] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&[0; 4]); // padding to 8
        v.extend_from_slice(&HEADER_MAGIC);
        v.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        v.extend_from_slice(&(store.len() as u32).to_be_bytes());
        for (tag, kind, off, count) in entries {
            v.extend_from_slice(&tag.to_be_bytes());
            v.extend_from_slice(&kind.to_be_bytes());
            v.extend_from_slice(&off.to_be_bytes());
            v.extend_from_slice(&count.to_be_bytes());
        }
        v.extend_from_slice(store);
        v
    }

    fn problem(data: &[u8]) -> String {
        parse_headers(data).unwrap_err().to_string()
    }

    #[test]
    fn the_crafted_int64_header_is_refused() {
        let data = package(&[(5009, TYPE_INT64, 0, u32::MAX)], &[0; 98]);
        assert_eq!(data.len(), 266);
        let e = problem(&data);
        assert_eq!(
            e,
            "malformed rpm header: main header entry 0 (tag 5009) declares 4294967295 INT64 \
             items, more than the 98-byte data store holds"
        );
    }

    #[test]
    fn each_rule() {
        let ok = package(&[(1000, TYPE_STRING, 0, 1)], b"name\0");
        let h = parse_headers(&ok).unwrap();
        assert_eq!(h.view(Which::Main).string(1000), Some(&b"name"[..]));
        assert_eq!(h.payload_offset(), ok.len() as u64);
        assert_eq!(h.view(Which::Signature).number(RPMSIGTAG_SIZE), Some(0));

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (package(&[(1000, 10, 0, 1)], b"x\0"), "unknown data type 10"),
            (package(&[(1000, TYPE_NULL, 0, 1)], b"x\0"), "NULL"),
            (package(&[(50, TYPE_STRING, 0, 1)], b"x\0"), "reserved"),
            (package(&[(1000, TYPE_STRING, 9, 1)], b"x\0"), "outside"),
            (package(&[(1000, TYPE_STRING, -4, 1)], b"x\0"), "outside"),
            (package(&[(1000, TYPE_INT32, 2, 1)], &[0; 8]), "aligned"),
            (package(&[(1000, TYPE_INT32, 0, 0)], &[0; 8]), "0 INT32"),
            (package(&[(1000, TYPE_INT32, 4, 2)], &[0; 8]), "holds"),
            (
                package(&[(1000, TYPE_STRING, 0, 2)], b"a\0b\0"),
                "STRING with 2",
            ),
            (
                package(&[(1000, TYPE_STRING, 0, 1)], b"abc"),
                "only 0 strings",
            ),
            (
                package(&[(1000, TYPE_STRING_ARRAY, 0, 3)], b"a\0b\0c"),
                "only 2 strings",
            ),
            (
                package(&[(1000, TYPE_INT8, 0, 4), (1001, TYPE_INT8, 2, 1)], &[0; 4]),
                "previous entry",
            ),
            (
                package(&[(1000, TYPE_BIN, 0, MAX_ARRAY_ITEMS + 1)], &[]),
                "more than the 0-byte",
            ),
            (package(&[], &[]), "0 entries"),
        ];
        for (data, want) in cases {
            let e = problem(&data);
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn limits_and_truncation() {
        let mut data = package(&[(1000, TYPE_INT8, 0, 1)], &[0]);
        let intro = LEAD_SIZE + 40;
        data[intro + 8..intro + 12].copy_from_slice(&0x1_0000u32.to_be_bytes());
        assert!(problem(&data).contains("65536 entries"));
        data[intro + 8..intro + 12].copy_from_slice(&1u32.to_be_bytes());
        data[intro + 12..intro + 16].copy_from_slice(&0x1000_0000u32.to_be_bytes());
        assert!(problem(&data).contains("data store"));
        // A store size within the limits but past the end of the file.
        data[intro + 12..intro + 16].copy_from_slice(&0x0100_0000u32.to_be_bytes());
        assert!(problem(&data).contains("truncated"), "{}", problem(&data));
        let good = package(&[(1000, TYPE_INT8, 0, 1)], &[0]);
        for cut in [0, 50, 96, 100, 120, 136, 140, 160, good.len() - 1] {
            let e = problem(&good[..cut]);
            assert!(
                e.contains("truncated") || e.contains("lead magic"),
                "{cut}: {e}"
            );
        }
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(problem(&bad).contains("lead magic"));
        let mut bad = good.clone();
        bad[intro + 5] = 1;
        assert!(problem(&bad).contains("header magic"));
    }
}
