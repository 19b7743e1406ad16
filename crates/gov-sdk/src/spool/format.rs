//! The spool's file format: one header line, then one line per record, each authenticated.
//!
//! ```text
//! governance-spool/1 <database> <key_id> <file id> <mac>\n      header
//! <n> <mac> <record JSON>\n                                      record n (0, 1, 2, …)
//! ```
//!
//! `<database>` is the identity of the database the file belongs to, `<key_id>` the fingerprint
//! of the chain key of the audit secret whose spool key made the MACs, `<file id>` the UUID in
//! the file's name. Each MAC is HMAC-SHA256 under the spool key (derived from the audit secret)
//! over a domain label and length-prefixed fields: the header's over the database, key id and
//! file id; a record's over the database, the file id, its position `n` and its exact bytes.
//! So a record cannot be altered, moved to another file or database, reordered or repeated
//! without its MAC failing, and a file made by anyone without the secret is refused whole.
//!
//! Reading works on bytes: the file is split on `\n` and each line is decoded on its own, so a
//! line torn by a crash (even inside a multi-byte UTF-8 character) costs that line only.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use gov_audit::DerivedKey;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// The first word of every spool file.
pub(crate) const MAGIC: &str = "governance-spool/1";
/// The longest line read (a record holds at most a 64 KiB payload, escaped): longer ones are
/// refused without being held in memory.
pub(crate) const MAX_LINE: usize = 1 << 20;

const HEADER_LABEL: &[u8] = b"governance/spool/v1/header\0";
const RECORD_LABEL: &[u8] = b"governance/spool/v1/record\0";

type HmacSha256 = hmac::Hmac<Sha256>;

/// The spool keys a handle holds: the current audit secret's (which writes) and earlier
/// secrets' (which may still read files written before a rotation), by chain `key_id`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    current: String,
    by_id: HashMap<String, DerivedKey>,
}

impl Keys {
    pub(crate) fn new(
        current: (String, DerivedKey),
        previous: impl IntoIterator<Item = (String, DerivedKey)>,
    ) -> Self {
        let mut by_id: HashMap<String, DerivedKey> = previous.into_iter().collect();
        let id = current.0.clone();
        by_id.insert(current.0, current.1);
        Self { current: id, by_id }
    }

    /// The key id files are written under.
    pub(crate) fn current_id(&self) -> &str {
        &self.current
    }

    fn get(&self, key_id: &str) -> Option<&DerivedKey> {
        self.by_id.get(key_id)
    }

    fn current(&self) -> &DerivedKey {
        match self.by_id.get(&self.current) {
            Some(k) => k,
            None => unreachable!("the current key is inserted at construction"),
        }
    }
}

fn mac(key: &DerivedKey, label: &[u8], fields: &[&[u8]]) -> HmacSha256 {
    let mut m = match HmacSha256::new_from_slice(key.expose()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    m.update(label);
    for f in fields {
        m.update(&(f.len() as u64).to_be_bytes());
        m.update(f);
    }
    m
}

fn header_mac(key: &DerivedKey, db: &str, key_id: &str, file: Uuid) -> HmacSha256 {
    mac(
        key,
        HEADER_LABEL,
        &[db.as_bytes(), key_id.as_bytes(), file.as_bytes()],
    )
}

fn record_mac(key: &DerivedKey, db: &str, file: Uuid, n: u64, json: &[u8]) -> HmacSha256 {
    mac(
        key,
        RECORD_LABEL,
        &[db.as_bytes(), file.as_bytes(), &n.to_be_bytes(), json],
    )
}

/// The header line of a new file, under the current key.
pub(crate) fn header_line(keys: &Keys, db: &str, file: Uuid) -> Vec<u8> {
    let tag = header_mac(keys.current(), db, keys.current_id(), file)
        .finalize()
        .into_bytes();
    format!(
        "{MAGIC} {db} {} {file} {}\n",
        keys.current_id(),
        hex::encode(tag)
    )
    .into_bytes()
}

/// The line of record `n` of `file`, whose JSON is `json` (one line: serde_json never writes
/// a raw newline).
pub(crate) fn record_line(keys: &Keys, db: &str, file: Uuid, n: u64, json: &[u8]) -> Vec<u8> {
    let tag = record_mac(keys.current(), db, file, n, json)
        .finalize()
        .into_bytes();
    let mut line = Vec::with_capacity(json.len() + 90);
    line.extend_from_slice(format!("{n} {} ", hex::encode(tag)).as_bytes());
    line.extend_from_slice(json);
    line.push(b'\n');
    line
}

/// A line of a file that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// 1-based line number in the file.
    pub(crate) line: usize,
    pub(crate) reason: String,
    /// The line's bytes (without its newline), cut at [`MAX_LINE`].
    pub(crate) bytes: Vec<u8>,
}

/// What a file held.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// Authenticated records by position, in order: (n, JSON bytes).
    pub(crate) records: Vec<(u64, Vec<u8>)>,
    /// Lines refused (not authentic, malformed, repeated).
    pub(crate) rejected: Vec<Rejected>,
    /// The last line, when the file ended inside it and it does not verify: a write cut short
    /// by a crash, never acknowledged.
    pub(crate) torn: Option<Rejected>,
    /// Positions missing between authenticated records (first, last): lines were removed.
    pub(crate) gaps: Vec<(u64, u64)>,
}

/// Why a file is not read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Written under a key this handle does not hold: left for a handle that does.
    UnknownKey(String),
    /// Not a spool file of this database, or not authentic: set aside whole.
    Bad(String),
}

enum Line {
    /// A line and its newline.
    Whole,
    /// The file ended inside the line.
    Unterminated,
    /// Longer than [`MAX_LINE`]; `buf` holds its start, the rest was skipped.
    TooLong,
}

/// Reads the next line into `buf` (cleared first, without the newline); `None` at the end.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(match (buf.is_empty() && !too_long, too_long) {
                (true, _) => None,
                (false, true) => Some(Line::TooLong),
                (false, false) => Some(Line::Unterminated),
            });
        }
        let (take, newline) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        if take > room {
            too_long = true;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take + usize::from(newline));
        if newline {
            return Ok(Some(if too_long { Line::TooLong } else { Line::Whole }));
        }
    }
}

/// Reads a spool file that should belong to database `db` and be named after `file`: its
/// header is checked first (a file that fails it is refused whole), then every record line on
/// its own.
pub(crate) fn read(
    r: &mut impl BufRead,
    keys: &Keys,
    db: &str,
    file: Uuid,
) -> std::io::Result<Result<Contents, Refusal>> {
    let mut buf = Vec::new();
    let key = match next_line(r, &mut buf)? {
        None => return Ok(Err(Refusal::Bad("the file is empty".into()))),
        Some(Line::Whole) => match check_header(&buf, keys, db, file) {
            Ok(k) => k,
            Err(refusal) => return Ok(Err(refusal)),
        },
        Some(_) => {
            return Ok(Err(Refusal::Bad(
                "the file has no complete header line".into(),
            )));
        }
    };
    let mut by_n: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut out = Contents::default();
    let mut line_no = 1;
    while let Some(kind) = next_line(r, &mut buf)? {
        line_no += 1;
        let reject = |reason: &str, buf: &[u8]| Rejected {
            line: line_no,
            reason: reason.to_owned(),
            bytes: buf.to_vec(),
        };
        let verified = match kind {
            Line::TooLong => Err("the line is longer than any record"),
            Line::Whole | Line::Unterminated => check_record(&buf, key, db, file),
        };
        match (verified, kind) {
            (Ok((n, json)), _) => match by_n.entry(n) {
                std::collections::btree_map::Entry::Occupied(_) => out
                    .rejected
                    .push(reject("a second record at the same position", &buf)),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(json.to_vec());
                }
            },
            // The file ends inside this line: a write that never finished.
            (Err(why), Line::Unterminated) => {
                out.torn = Some(reject(&format!("a torn last line ({why})"), &buf));
            }
            (Err(why), _) => out.rejected.push(reject(why, &buf)),
        }
    }
    let mut expected = 0u64;
    for (n, json) in by_n {
        if n > expected {
            out.gaps.push((expected, n - 1));
        }
        expected = n.saturating_add(1);
        out.records.push((n, json));
    }
    Ok(Ok(out))
}

fn check_header<'k>(
    line: &[u8],
    keys: &'k Keys,
    db: &str,
    file: Uuid,
) -> Result<&'k DerivedKey, Refusal> {
    let bad = |why: &str| Refusal::Bad(why.to_owned());
    let text = std::str::from_utf8(line).map_err(|_| bad("the header is not text"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    let [magic, file_db, key_id, file_id, tag] = parts[..] else {
        return Err(bad("the header is not a spool header"));
    };
    if magic != MAGIC {
        return Err(bad("the header is not a spool header of this version"));
    }
    if file_db != db {
        return Err(bad("the file names another database"));
    }
    if file_id.parse::<Uuid>().ok() != Some(file) {
        return Err(bad("the header names another file"));
    }
    let Some(key) = keys.get(key_id) else {
        return Err(Refusal::UnknownKey(key_id.to_owned()));
    };
    let tag = hex::decode(tag).map_err(|_| bad("the header's MAC is not hex"))?;
    header_mac(key, db, key_id, file)
        .verify_slice(&tag)
        .map_err(|_| bad("the header's MAC does not verify: the file was not written by a holder of the audit secret"))?;
    Ok(key)
}

fn check_record<'l>(
    line: &'l [u8],
    key: &DerivedKey,
    db: &str,
    file: Uuid,
) -> Result<(u64, &'l [u8]), &'static str> {
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (Some(n), Some(tag), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("the line is not a spool record");
    };
    let n: u64 = std::str::from_utf8(n)
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or("the line has no position")?;
    let tag = std::str::from_utf8(tag)
        .ok()
        .and_then(|t| hex::decode(t).ok())
        .ok_or("the line's MAC is not hex")?;
    record_mac(key, db, file, n, json)
        .verify_slice(&tag)
        .map_err(|_| "the record's MAC does not verify: it was altered, moved or forged")?;
    Ok((n, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> Keys {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(seed);
        }
        let secret = gov_audit::AuditSecret::from_bytes(&bytes).unwrap();
        Keys::new(
            (secret.chain_key().key_id().to_owned(), secret.spool_key()),
            [],
        )
    }

    const DB: &str = "0123456789abcdef0123456789abcdef";

    /// A file of `records` (JSON texts) with header; returns the bytes and where each record
    /// line starts.
    fn file(keys: &Keys, id: Uuid, records: &[&str]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = header_line(keys, DB, id);
        let mut starts = Vec::new();
        for (n, r) in records.iter().enumerate() {
            starts.push(bytes.len());
            bytes.extend(record_line(keys, DB, id, n as u64, r.as_bytes()));
        }
        (bytes, starts)
    }

    fn parse(keys: &Keys, id: Uuid, bytes: &[u8]) -> Result<Contents, Refusal> {
        read(&mut std::io::Cursor::new(bytes), keys, DB, id).unwrap()
    }

    fn texts(c: &Contents) -> Vec<String> {
        c.records
            .iter()
            .map(|(_, j)| String::from_utf8(j.clone()).unwrap())
            .collect()
    }

    const RECORDS: &[&str] = &[
        r#"{"n":0,"text":"plain"}"#,
        r#"{"n":1,"text":"é😀 multi-byte"}"#,
        r#"{"n":2,"text":"日本語のテキスト"}"#,
        r#"{"n":3,"text":"🦀🦀🦀"}"#,
    ];

    #[test]
    fn a_file_reads_back_whole() {
        let k = keys(1);
        let id = Uuid::now_v7();
        let (bytes, _) = file(&k, id, RECORDS);
        let c = parse(&k, id, &bytes).unwrap();
        assert_eq!(texts(&c), RECORDS);
        assert!(c.rejected.is_empty() && c.torn.is_none() && c.gaps.is_empty());
    }

    #[test]
    fn a_tear_at_every_byte_of_the_last_records_loses_only_the_torn_record() {
        let k = keys(2);
        let id = Uuid::now_v7();
        let (bytes, starts) = file(&k, id, RECORDS);
        // Every cut from the start of the second-to-last record to the end of the file.
        for cut in starts[RECORDS.len() - 2]..=bytes.len() {
            let c = parse(&k, id, &bytes[..cut]).unwrap();
            // Records whose line (newline included) is wholly before the cut survive; the
            // line the cut falls in is the only one lost.
            let whole = starts
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
                    end <= cut
                })
                .count();
            let got = texts(&c);
            // A cut just before a newline leaves a complete, authentic record: it is kept.
            let kept_unterminated = got.len() == whole + 1;
            assert!(
                got.len() == whole || kept_unterminated,
                "cut at {cut}: {} records",
                got.len()
            );
            assert_eq!(got[..], RECORDS[..got.len()], "cut at {cut}");
            assert!(c.rejected.is_empty(), "cut at {cut}: {:?}", c.rejected);
            assert!(c.gaps.is_empty(), "cut at {cut}");
            let mid_line = !starts.contains(&cut) && cut != bytes.len();
            assert_eq!(
                c.torn.is_some(),
                mid_line && !kept_unterminated,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_forged_file_or_a_file_of_another_database_is_refused_whole() {
        let k = keys(3);
        let id = Uuid::now_v7();
        let (bytes, _) = file(&k, id, RECORDS);
        // Someone without the secret.
        let other = keys(4);
        let (forged, _) = file(&other, id, RECORDS);
        assert!(matches!(
            parse(&k, id, &forged),
            Err(Refusal::UnknownKey(_))
        ));
        // A header that names our key but carries a made-up MAC.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let header_end = text.find('\n').unwrap();
        let mut made_up = text[..header_end - 64].to_owned();
        made_up.push_str(&"0".repeat(64));
        made_up.push_str(&text[header_end..]);
        assert!(matches!(
            parse(&k, id, made_up.as_bytes()),
            Err(Refusal::Bad(_))
        ));
        // Renamed to another file id, or read for another database.
        assert!(matches!(
            parse(&k, Uuid::now_v7(), &bytes),
            Err(Refusal::Bad(_))
        ));
        let c = read(&mut std::io::Cursor::new(&bytes), &k, "another", id).unwrap();
        assert!(matches!(c, Err(Refusal::Bad(_))));
        assert!(matches!(parse(&k, id, b""), Err(Refusal::Bad(_))));
        assert!(matches!(
            parse(&k, id, b"{\"type\":\"audit\"}\n"),
            Err(Refusal::Bad(_))
        ));
    }

    #[test]
    fn altered_moved_repeated_and_reordered_records_are_caught() {
        let k = keys(5);
        let id = Uuid::now_v7();
        let (bytes, starts) = file(&k, id, RECORDS);
        let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
        // Altered: one byte of record 1's JSON changed.
        let mut altered = bytes.clone();
        let at = starts[1] + 80;
        altered[at] ^= 0x01;
        let c = parse(&k, id, &altered).unwrap();
        assert_eq!(c.records.len(), 3);
        assert_eq!(c.rejected.len(), 1);
        assert_eq!(c.gaps, vec![(1, 1)], "the missing record is reported");
        // Repeated: record 2's line twice.
        let mut repeated = bytes.clone();
        repeated.extend_from_slice(lines[3]);
        let c = parse(&k, id, &repeated).unwrap();
        assert_eq!(texts(&c), RECORDS);
        assert_eq!(c.rejected.len(), 1);
        // Reordered: records come back in their original order.
        let mut reordered = lines[0].to_vec();
        for i in [4, 2, 3, 1] {
            reordered.extend_from_slice(lines[i]);
        }
        let c = parse(&k, id, &reordered).unwrap();
        assert_eq!(texts(&c), RECORDS);
        assert!(c.rejected.is_empty());
        // Spliced in from another file of the same database and key.
        let other_id = Uuid::now_v7();
        let (other, other_starts) = file(&k, other_id, &[r#"{"n":9}"#]);
        let mut spliced = bytes.clone();
        spliced.extend_from_slice(&other[other_starts[0]..]);
        let c = parse(&k, id, &spliced).unwrap();
        assert_eq!(texts(&c), RECORDS);
        assert_eq!(c.rejected.len(), 1);
    }

    #[test]
    fn invalid_utf8_and_overlong_lines_cost_only_themselves() {
        let k = keys(6);
        let id = Uuid::now_v7();
        let (mut bytes, _) = file(&k, id, &RECORDS[..2]);
        bytes.extend_from_slice(b"\xff\xfe garbage\n");
        bytes.extend(vec![b'x'; MAX_LINE + 10]);
        bytes.push(b'\n');
        bytes.extend(record_line(&k, DB, id, 2, RECORDS[2].as_bytes()));
        let c = parse(&k, id, &bytes).unwrap();
        assert_eq!(texts(&c), RECORDS[..3]);
        assert_eq!(c.rejected.len(), 2);
        assert!(c.rejected[1].bytes.len() <= MAX_LINE);
    }

    /// Tears through the whole adoption path (read, validate, copy, quarantine, remove), at
    /// every byte offset of a file's last line and of a header, for ASCII and multi-byte
    /// payloads: a tear costs at most the torn record, never an earlier one (nor an earlier
    /// file's), and the torn bytes are kept in the quarantine exactly as they were.
    mod adoption {
        use std::path::{Path, PathBuf};

        use gov_core::AuditEvent;
        use uuid::Uuid;

        use super::super::super::{Record, Setup, Spool, dir, identity, lock};
        use super::super::{Keys, header_line, record_line};

        const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";

        fn setup(root: &Path, instance: &gov_store::Instance) -> Setup {
            let secret = gov_audit::AuditSecret::parse(SECRET).unwrap();
            Setup {
                root: Some(root.to_owned()),
                instance: Some(instance.clone()),
                keys: Keys::new(
                    (secret.chain_key().key_id().to_owned(), secret.spool_key()),
                    [],
                ),
                max_batch: 1_000,
                deadline: std::time::Duration::from_secs(5),
            }
        }

        fn records(text: &str) -> Vec<Record> {
            (0..3)
                .map(|n| Record::Audit {
                    event: AuditEvent::builder("agent", "tool.call")
                        .session("s")
                        .payload(serde_json::json!({ "n": n, "text": text }))
                        .build()
                        .unwrap(),
                })
                .collect()
        }

        /// A spool file's bytes holding `records`, and where its last line starts.
        fn spool_bytes(s: &Setup, db: &str, id: Uuid, records: &[Record]) -> (Vec<u8>, usize) {
            let mut bytes = header_line(&s.keys, db, id);
            let mut last = bytes.len();
            for (n, r) in records.iter().enumerate() {
                last = bytes.len();
                let json = serde_json::to_vec(r).unwrap();
                bytes.extend(record_line(&s.keys, db, id, n as u64, &json));
            }
            (bytes, last)
        }

        /// Puts `bytes` in `root`'s folder for `db` as file `id`, as a process that died left it.
        fn place(root: &Path, db: &str, id: Uuid, bytes: &[u8]) -> PathBuf {
            dir::ensure_private(root).unwrap();
            dir::ensure_private(&root.join(db)).unwrap();
            let path = root.join(db).join(format!("{id}.spool"));
            std::fs::write(&path, bytes).unwrap();
            path
        }

        /// What a handle opened on `root` adopted: the queued records' JSON, in order.
        fn adopted(spool: &Spool) -> Vec<serde_json::Value> {
            let sh = spool.shared.as_ref().unwrap();
            lock(&sh.state)
                .queue
                .iter()
                .map(|e| serde_json::to_value(&e.record).unwrap())
                .collect()
        }

        /// The quarantine folder's files (name, bytes), sorted by name.
        fn quarantine(spool: &Spool) -> Vec<(String, Vec<u8>)> {
            let q = dir::quarantine_dir(spool.dir().unwrap());
            let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&q)
                .map(|d| {
                    d.flatten()
                        .map(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            (name, std::fs::read(e.path()).unwrap())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.sort();
            out
        }

        fn tempdir(tag: &str) -> PathBuf {
            let d = std::env::temp_dir().join(format!("gov-spool-tears-{tag}-{}", Uuid::now_v7()));
            std::fs::create_dir_all(&d).unwrap();
            d
        }

        /// Writes figures to the fault report when `cargo xtask faults` asks for them.
        fn report(scenario: &str, figures: &serde_json::Value) {
            if let Some(dir) = std::env::var_os("GOV_TEST_FAULTS_REPORT") {
                let path = Path::new(&dir).join(format!("{scenario}.json"));
                std::fs::write(path, serde_json::to_vec_pretty(figures).unwrap()).unwrap();
            }
        }

        fn values(records: &[Record]) -> Vec<serde_json::Value> {
            records
                .iter()
                .map(|r| serde_json::to_value(r).unwrap())
                .collect()
        }

        #[test]
        fn a_tear_at_every_byte_of_the_last_line_costs_that_record_only() {
            let instance = gov_store::Instance {
                id: Uuid::now_v7(),
                locator: "sqlite:/tears".into(),
            };
            let db = identity(&instance);
            let base = tempdir("last");
            let (mut cuts, mut wrong, mut quarantined) = (0, 0, 0);
            for text in ["plain ASCII text only", "é😀 日本語のテキスト 🦀 ü"] {
                let recs = records(text);
                let id = Uuid::now_v7();
                let (bytes, last) = spool_bytes(&setup(&base, &instance), &db, id, &recs);
                let end = bytes.len();
                assert!(
                    text.is_ascii() || bytes[last..].iter().any(|b| *b >= 0x80),
                    "the last line holds multi-byte characters"
                );
                for cut in last..=end {
                    let root = base.join(format!("{}-{cut}", text.len()));
                    let path = place(&root, &db, id, &bytes[..cut]);
                    let spool = Spool::open(setup(&root, &instance)).unwrap();
                    // Whole up to its MAC'd bytes (only the newline missing): kept; cut inside
                    // the line: that record only is lost; cut at the line's start: nothing torn.
                    let torn = cut > last && cut < end - 1;
                    let kept = if cut >= end - 1 { 3 } else { 2 };
                    let got = adopted(&spool);
                    if got[..] != values(&recs[..kept])[..] {
                        eprintln!("{text:?} cut at {cut} of {last}..{end}: adopted {got:?}");
                        wrong += 1;
                    }
                    assert!(!path.exists(), "cut at {cut}: the adopted file is removed");
                    let q = quarantine(&spool);
                    if torn {
                        assert_eq!(q.len(), 1, "cut at {cut}: the torn bytes are kept aside");
                        assert!(
                            q[0].0.starts_with(&format!("{id}.spool-")),
                            "cut at {cut}: the torn line is kept aside, not the whole file ({}); {wrong} cuts so far cost earlier records",
                            q[0].0
                        );
                        let text = String::from_utf8(q[0].1.clone()).unwrap();
                        let kept: Vec<serde_json::Value> = text
                            .lines()
                            .map(|l| serde_json::from_str(l).unwrap())
                            .collect();
                        assert_eq!(kept.len(), 1, "cut at {cut}: one line kept aside");
                        assert_eq!(
                            kept[0]["hex"].as_str().unwrap(),
                            hex::encode(&bytes[last..cut]),
                            "cut at {cut}: the torn bytes, exactly"
                        );
                        assert_eq!(kept[0]["line"], 4, "cut at {cut}");
                        quarantined += 1;
                    } else {
                        assert!(q.is_empty(), "cut at {cut}: nothing is quarantined: {q:?}");
                    }
                    drop(spool);
                    let _ = std::fs::remove_dir_all(&root);
                    cuts += 1;
                }
            }
            let _ = std::fs::remove_dir_all(&base);
            report(
                "tears_last_line",
                &serde_json::json!({
                    "payloads": ["ASCII", "multi-byte UTF-8"],
                    "cuts": cuts,
                    "torn_lines_quarantined": quarantined,
                    "earlier_records_lost": wrong,
                }),
            );
            assert_eq!(
                wrong, 0,
                "a tear cost an earlier record, or kept a torn one"
            );
            assert!(cuts > 400, "{cuts} cuts");
        }

        #[test]
        fn a_tear_at_every_byte_of_a_header_costs_no_record_of_an_earlier_file() {
            let instance = gov_store::Instance {
                id: Uuid::now_v7(),
                locator: "sqlite:/tears".into(),
            };
            let db = identity(&instance);
            let base = tempdir("header");
            let (mut cuts, mut wrong, mut quarantined) = (0, 0, 0);
            for text in ["plain ASCII text only", "é😀 日本語のテキスト 🦀 ü"] {
                let recs = records(text);
                // An earlier file, whole; then a file whose creation a crash cut short.
                let earlier = Uuid::now_v7();
                let (earlier_bytes, _) = spool_bytes(&setup(&base, &instance), &db, earlier, &recs);
                let torn_id = Uuid::now_v7();
                let header = header_line(&setup(&base, &instance).keys, &db, torn_id);
                for cut in 0..=header.len() {
                    let root = base.join(format!("{}-{cut}", text.len()));
                    let first = place(&root, &db, earlier, &earlier_bytes);
                    let torn = place(&root, &db, torn_id, &header[..cut]);
                    let spool = Spool::open(setup(&root, &instance)).unwrap();
                    let got = adopted(&spool);
                    if got != values(&recs) {
                        eprintln!("header cut at {cut}: adopted {got:?}");
                        wrong += 1;
                    }
                    assert!(!first.exists() && !torn.exists(), "header cut at {cut}");
                    let q = quarantine(&spool);
                    if cut < header.len() {
                        assert_eq!(
                            q.len(),
                            1,
                            "header cut at {cut}: the torn file is kept aside"
                        );
                        assert!(
                            q[0].0.starts_with(&format!("{torn_id}.spool.")),
                            "{}",
                            q[0].0
                        );
                        assert_eq!(q[0].1, &header[..cut], "header cut at {cut}: as it was");
                        quarantined += 1;
                    } else {
                        assert!(q.is_empty(), "a whole header: nothing quarantined: {q:?}");
                    }
                    drop(spool);
                    let _ = std::fs::remove_dir_all(&root);
                    cuts += 1;
                }
            }
            let _ = std::fs::remove_dir_all(&base);
            report(
                "tears_header",
                &serde_json::json!({
                    "payloads": ["ASCII", "multi-byte UTF-8"],
                    "cuts": cuts,
                    "torn_files_quarantined": quarantined,
                    "earlier_records_lost": wrong,
                }),
            );
            assert_eq!(wrong, 0, "a torn header cost an earlier file's records");
        }
    }
}
