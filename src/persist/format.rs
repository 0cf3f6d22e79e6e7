//! The files of the durable tier, byte by byte (REFERENCE 4.11). Hand-written: a header and
//! checksummed frames are all it takes, and the reader must skip what a kill or a bad disk
//! damaged and go on, which a general container format would refuse whole.
//!
//! A file: a header, then records.
//! - Header: `CRCLSESS`, the format version (u16), the kind (u8: 1 log, 2 snapshot), the
//!   cluster domain and the node's route (each u16 length + UTF-8), a CRC-32 of all that.
//! - Record: a marker (`C5 5E 55 10`), the payload's length (u32) and CRC-32 (u32), the
//!   payload: postcard of [`Record`] (the node's wall-clock time of the write and the
//!   session [`Change`]). Decoding is to this one type, never to whatever a file names.
//!
//! A reader checks every record's length and checksum and decodes it; one that fails is
//! skipped and the next marker searched for, so every intact record loads and no partial
//! one does. A record cut off by the end of the file is a torn tail.

use serde::{Deserialize, Serialize};

use crate::session::Change;

pub(super) const MAGIC: &[u8; 8] = b"CRCLSESS";
/// This build's format. A file of a newer one is refused, never guessed at.
pub(super) const FORMAT: u16 = 1;
pub(super) const MARKER: [u8; 4] = [0xC5, 0x5E, 0x55, 0x10];
/// Largest header: magic, format, kind, two texts of at most 64 KiB, the checksum.
pub(super) const MAX_HEADER: usize = 8 + 2 + 1 + 2 * (2 + u16::MAX as usize) + 4;
/// Largest payload accepted: a session is at most 8 MiB of attributes.
pub(super) const MAX_RECORD: usize = 16 << 20;
const FRAME: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Log = 1,
    Snapshot = 2,
}

/// One record: the change, and this node's wall-clock time when it wrote it (a restart
/// subtracts the time since from the session's remaining lifetime, on this node's own clock).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub written_unix_ms: u64,
    pub change: Change,
}

/// Why a file is not this node's to load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("not a caracal session file")]
    NotOurs,
    #[error("written by a newer caracal (format {0}, this build reads up to {FORMAT})")]
    Newer(u16),
    #[error("belongs to cluster domain {found:?}, not {expected:?}")]
    Domain { found: String, expected: String },
    #[error("belongs to node {found:?}, not {expected:?}")]
    Route { found: String, expected: String },
    #[error("its header is damaged")]
    Damaged,
}

pub(super) fn header(kind: Kind, domain: &str, route: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(32 + domain.len() + route.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    h.push(kind as u8);
    for s in [domain, route] {
        h.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
        h.extend_from_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
    }
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file's header against this node; the offset of its first record.
pub(super) fn check_header(
    bytes: &[u8],
    kind: Kind,
    domain: &str,
    route: &str,
) -> Result<usize, HeaderError> {
    if bytes.len() < 11 || &bytes[..8] != MAGIC {
        return Err(HeaderError::NotOurs);
    }
    let format = u16::from_le_bytes([bytes[8], bytes[9]]);
    if format > FORMAT {
        return Err(HeaderError::Newer(format));
    }
    let mut at = 11;
    let text = |at: &mut usize| -> Result<String, HeaderError> {
        let len = bytes.get(*at..*at + 2).ok_or(HeaderError::Damaged)?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let s = bytes
            .get(*at + 2..*at + 2 + len)
            .ok_or(HeaderError::Damaged)?;
        *at += 2 + len;
        String::from_utf8(s.to_vec()).map_err(|_| HeaderError::Damaged)
    };
    let found_domain = text(&mut at)?;
    let found_route = text(&mut at)?;
    let crc = bytes.get(at..at + 4).ok_or(HeaderError::Damaged)?;
    if crc32fast::hash(&bytes[..at]) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]])
        || bytes[10] != kind as u8
    {
        return Err(HeaderError::Damaged);
    }
    if found_domain != domain {
        return Err(HeaderError::Domain {
            found: found_domain,
            expected: domain.to_string(),
        });
    }
    if found_route != route {
        return Err(HeaderError::Route {
            found: found_route,
            expected: route.to_string(),
        });
    }
    Ok(at + 4)
}

/// Appends one framed record to `out` (`false`: it cannot be encoded; nothing appended).
pub(super) fn frame(out: &mut Vec<u8>, r: &Record) -> bool {
    let Ok(body) = postcard::to_allocvec(r) else {
        return false;
    };
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    true
}

/// What a read found besides the records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadStats {
    pub records: u64,
    /// Records whose checksum or decoding failed, and stretches of bytes that held no
    /// record (a damaged length makes one stretch).
    pub skipped: u64,
    /// The file ended inside a record (a write cut off by a kill or a full disk).
    pub torn: bool,
    /// Where the last intact record ended: appending goes on from there.
    pub end: usize,
}

/// Calls `f` with every intact record of `bytes` from `at` on, in order.
pub(super) fn read(bytes: &[u8], mut at: usize, f: &mut dyn FnMut(Record)) -> ReadStats {
    let mut st = ReadStats {
        end: at,
        ..ReadStats::default()
    };
    let mut lost = false;
    while at < bytes.len() {
        if bytes.len() - at < FRAME || bytes[at..at + 4] != MARKER {
            // Not a record here: search the next marker.
            match find_marker(bytes, at + 1) {
                Some(next) => {
                    lost = true;
                    at = next;
                    continue;
                }
                None => {
                    // Trailing bytes with no marker: a frame head cut short, or garbage.
                    let n = (bytes.len() - at).min(MARKER.len());
                    if bytes.len() - at < FRAME && bytes[at..at + n] == MARKER[..n] {
                        st.torn = true;
                    } else {
                        lost = true;
                    }
                    break;
                }
            }
        }
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let crc =
            u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
        if len > MAX_RECORD {
            lost = true;
            at += 1;
            continue;
        }
        let Some(body) = bytes.get(at + FRAME..at + FRAME + len) else {
            // Runs past the end: the last write was cut off, unless a later marker starts
            // an intact record (then this one was damaged).
            match find_marker(bytes, at + 1) {
                Some(next) => {
                    lost = true;
                    at = next;
                    continue;
                }
                None => {
                    st.torn = true;
                    break;
                }
            }
        };
        let decoded = (crc32fast::hash(body) == crc)
            .then(|| postcard::from_bytes::<Record>(body).ok())
            .flatten();
        match decoded {
            Some(r) => {
                if lost {
                    st.skipped += 1;
                    lost = false;
                }
                st.records += 1;
                at += FRAME + len;
                st.end = at;
                f(r);
            }
            None => {
                lost = true;
                at += 1;
            }
        }
    }
    if lost {
        st.skipped += 1;
    }
    st
}

fn find_marker(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < bytes.len() {
        let i = memchr::memchr(MARKER[0], &bytes[at..])? + at;
        if bytes.get(i..i + 4) == Some(&MARKER[..]) {
            return Some(i);
        }
        at = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            written_unix_ms: 1_000 + i,
            change: Change::Touch {
                key: i as u128,
                epoch: 1,
                version: i,
            },
        }
    }

    fn file(n: u64) -> (Vec<u8>, usize) {
        let mut f = header(Kind::Log, "dom", "n1");
        let start = f.len();
        for i in 0..n {
            assert!(frame(&mut f, &rec(i)));
        }
        (f, start)
    }

    fn keys(bytes: &[u8], at: usize) -> (Vec<u128>, ReadStats) {
        let mut v = Vec::new();
        let st = read(bytes, at, &mut |r| v.push(r.change.key()));
        (v, st)
    }

    #[test]
    fn a_header_names_its_domain_route_and_format() {
        let h = header(Kind::Log, "dom", "n1");
        assert_eq!(check_header(&h, Kind::Log, "dom", "n1"), Ok(h.len()));
        assert!(matches!(
            check_header(&h, Kind::Log, "other", "n1"),
            Err(HeaderError::Domain { .. })
        ));
        assert!(matches!(
            check_header(&h, Kind::Log, "dom", "n2"),
            Err(HeaderError::Route { .. })
        ));
        assert_eq!(
            check_header(&h, Kind::Snapshot, "dom", "n1"),
            Err(HeaderError::Damaged)
        );
        let mut newer = h.clone();
        newer[8] = 9;
        assert_eq!(
            check_header(&newer, Kind::Log, "dom", "n1"),
            Err(HeaderError::Newer(9))
        );
        let mut bad = h.clone();
        bad[12] ^= 1;
        assert!(check_header(&bad, Kind::Log, "dom", "n1").is_err());
        assert_eq!(
            check_header(b"PK\x03\x04 something", Kind::Log, "dom", "n1"),
            Err(HeaderError::NotOurs)
        );
    }

    #[test]
    fn intact_records_read_back_in_order() {
        let (f, at) = file(50);
        let (k, st) = keys(&f, at);
        assert_eq!(k, (0..50).collect::<Vec<u128>>());
        assert_eq!(
            (st.records, st.skipped, st.torn, st.end),
            (50, 0, false, f.len())
        );
    }

    #[test]
    fn a_torn_tail_loses_only_the_cut_record() {
        let (f, at) = file(10);
        // Where each record ends.
        let mut ends = Vec::new();
        let mut g = f[..at].to_vec();
        for i in 0..10 {
            assert!(frame(&mut g, &rec(i)));
            ends.push(g.len());
        }
        for cut in 1..f.len() - at {
            let g = &f[..f.len() - cut];
            let (k, st) = keys(g, at);
            let whole = ends.iter().filter(|e| **e <= g.len()).count();
            assert_eq!(k, (0..whole as u128).collect::<Vec<u128>>(), "cut {cut}");
            if st.end != g.len() {
                assert!(st.torn || st.skipped == 1, "cut {cut}: {st:?}");
            }
        }
    }

    /// Every single flipped byte (and a run of garbage) costs at most the record it hit
    /// and never yields a damaged one.
    #[test]
    fn a_flipped_byte_skips_one_record_and_loads_the_rest() {
        let (f, at) = file(20);
        for i in at..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x5A;
            let (k, st) = keys(&g, at);
            assert!(k.len() >= 19, "byte {i}: {} records", k.len());
            assert!(k.windows(2).all(|w| w[0] < w[1]), "byte {i}: out of order");
            for key in &k {
                assert!(*key < 20);
            }
            if k.len() == 19 {
                assert!(st.skipped >= 1 || st.torn, "byte {i}: loss not counted");
            }
        }
        let mut g = f.clone();
        let mid = at + (f.len() - at) / 2;
        for b in &mut g[mid..mid + 40] {
            *b = 0xC5;
        }
        let (k, st) = keys(&g, at);
        assert!(k.len() >= 17 && st.skipped >= 1, "{} {st:?}", k.len());
    }
}
