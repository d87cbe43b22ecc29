//! A minimal DER writer for the structures the signer builds (RFC 5280
//! certificates and CRLs, RFC 6960 OCSP responses).
//!
//! The signer writes DER itself rather than through a builder so that every
//! octet it signs is decided here, in code a reviewer can read in one sitting;
//! what it wrote is then parsed back with an independent parser (x509-cert)
//! and checked before any key is used (see `x509::lint_*`).

pub const TAG_BOOLEAN: u8 = 0x01;
pub const TAG_INTEGER: u8 = 0x02;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_OCTET_STRING: u8 = 0x04;
pub const TAG_NULL: u8 = 0x05;
pub const TAG_OID: u8 = 0x06;
pub const TAG_ENUMERATED: u8 = 0x0a;
pub const TAG_UTF8_STRING: u8 = 0x0c;
pub const TAG_PRINTABLE_STRING: u8 = 0x13;
pub const TAG_IA5_STRING: u8 = 0x16;
pub const TAG_UTC_TIME: u8 = 0x17;
pub const TAG_GENERALIZED_TIME: u8 = 0x18;
pub const TAG_SEQUENCE: u8 = 0x30;
pub const TAG_SET: u8 = 0x31;

/// Appends a tag-length-value.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Octets of the tag and length of a TLV whose content is `len` octets.
pub fn header_len(len: usize) -> usize {
    if len < 0x80 {
        2
    } else {
        2 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    }
}

/// Appends the tag and length of a TLV; the caller appends `len` octets of
/// content.
pub fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    push_len(out, len);
}

/// A constructed TLV of the concatenated `parts`, written with one
/// allocation (large CRLs are tens of megabytes).
fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(header_len(len) + len);
    push_header(&mut out, tag, len);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    constructed(TAG_SEQUENCE, parts)
}

pub fn set(parts: &[&[u8]]) -> Vec<u8> {
    constructed(TAG_SET, parts)
}

/// A non-negative INTEGER from a big-endian magnitude (leading zeros are
/// stripped, a 0x00 is prepended when the top bit is set).
pub fn uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let m = &magnitude[skip..];
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.is_empty() || m[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(m);
    tlv(TAG_INTEGER, &content)
}

pub fn uint_u64(v: u64) -> Vec<u8> {
    uint(&v.to_be_bytes())
}

pub fn boolean(v: bool) -> Vec<u8> {
    tlv(TAG_BOOLEAN, &[if v { 0xff } else { 0x00 }])
}

pub fn null() -> Vec<u8> {
    vec![TAG_NULL, 0]
}

pub fn octets(v: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, v)
}

/// BIT STRING with no unused bits.
pub fn bits(v: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(v.len() + 1);
    content.push(0);
    content.extend_from_slice(v);
    tlv(TAG_BIT_STRING, &content)
}

pub fn enumerated(v: u8) -> Vec<u8> {
    tlv(TAG_ENUMERATED, &[v])
}

/// An OBJECT IDENTIFIER from its dotted form. Only called with the constant
/// OIDs of this crate; a malformed constant is a programming error caught by
/// the unit tests.
pub fn oid(dotted: &str) -> Vec<u8> {
    // Several OIDs go into every certificate: no list of arcs is collected.
    let mut arcs = dotted.split('.').filter_map(|a| a.parse::<u64>().ok());
    let mut content = Vec::with_capacity(dotted.len());
    if let (Some(a0), Some(a1)) = (arcs.next(), arcs.next()) {
        push_base128(&mut content, a0 * 40 + a1);
        for a in arcs {
            push_base128(&mut content, a);
        }
    }
    tlv(TAG_OID, &content)
}

fn push_base128(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    let last = tmp.len() - 1;
    for (j, b) in tmp.iter().enumerate().skip(i) {
        out.push(if j == last { *b } else { *b | 0x80 });
    }
}

/// Context-specific, constructed `[n]` wrapping `content` (EXPLICIT tagging,
/// or IMPLICIT tagging of a constructed type).
pub fn ctx_cons(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, content)
}

/// Context-specific, primitive `[n]` (IMPLICIT tagging of a primitive type).
pub fn ctx_prim(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0x80 | n, content)
}

pub use castellan_proto::time::{civil_from_days, days_from_civil, ymdhms};

/// Earliest instant the signer writes: 1950-01-01T00:00:00Z, where RFC 5280
/// Time begins (UTCTime 50..99 stands for 1950..1999).
pub const MIN_TIME: i64 = -631_152_000;
/// Latest instant the signer writes: 9999-12-31T23:59:59Z, the last a
/// four-digit GeneralizedTime can carry.
pub const MAX_TIME: i64 = 253_402_300_799;

/// Refuses a time the signer cannot encode as RFC 5280 / RFC 6960 require:
/// outside 1950-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z. `what` names the
/// field in the message.
pub fn check_time_range(unix: i64, what: &str) -> Result<(), String> {
    if (MIN_TIME..=MAX_TIME).contains(&unix) {
        Ok(())
    } else {
        Err(format!(
            "{what} ({unix} seconds since 1970) is outside the years 1950 to 9999 the signer can encode; send a time between {MIN_TIME} and {MAX_TIME}"
        ))
    }
}

/// Earliest instant the signer writes into a certificate or a CRL:
/// 1970-01-01T00:00:00Z. Both are read back with the `der` crate before
/// signing, which reads times from 1970 on (OCSP times are checked by the
/// signer's own reader and may go back to 1950).
pub const MIN_X509_TIME: i64 = 0;

/// [`check_time_range`] for a time in a certificate or CRL: 1970..=9999.
pub fn check_x509_time(unix: i64, what: &str) -> Result<(), String> {
    if (MIN_X509_TIME..=MAX_TIME).contains(&unix) {
        Ok(())
    } else {
        Err(format!(
            "{what} ({unix} seconds since 1970) is outside the years 1970 to 9999 the signer writes into certificates and CRLs; send a time between {MIN_X509_TIME} and {MAX_TIME}"
        ))
    }
}

/// GeneralizedTime `YYYYMMDDHHMMSSZ`.
pub fn generalized_time(unix: i64) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = ymdhms(unix);
    let text = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z");
    tlv(TAG_GENERALIZED_TIME, text.as_bytes())
}

/// RFC 5280 Time: UTCTime through 2049, GeneralizedTime from 2050.
pub fn x509_time(unix: i64) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = ymdhms(unix);
    if (1950..2050).contains(&y) {
        let text = format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100);
        tlv(TAG_UTC_TIME, text.as_bytes())
    } else {
        generalized_time(unix)
    }
}

/// An RFC 5280 Time written without formatting machinery (a CRL of a
/// million entries writes a million of them): `(tag, text, text length)`,
/// UTCTime `YYMMDDHHMMSSZ` through 2049 and GeneralizedTime
/// `YYYYMMDDHHMMSSZ` otherwise or when `generalized` is asked. `None` for a
/// time outside [`MIN_TIME`]..=[`MAX_TIME`] (see [`check_time_range`]).
pub fn time_text(unix: i64, generalized: bool) -> Option<(u8, [u8; 15], usize)> {
    if !(MIN_TIME..=MAX_TIME).contains(&unix) {
        return None;
    }
    let day = unix.div_euclid(86_400);
    let (y, mo, d) = civil_from_days(day);
    time_text_of(y, mo, d, unix.rem_euclid(86_400) as u32, generalized)
}

/// [`time_text`] of a civil date and the seconds into that day, for callers
/// that already know the date.
pub fn time_text_of(
    y: i64,
    mo: u32,
    d: u32,
    seconds: u32,
    generalized: bool,
) -> Option<(u8, [u8; 15], usize)> {
    if !(0..=9999).contains(&y) {
        return None;
    }
    let generalized = generalized || !(1950..2050).contains(&y);
    let y = y as u32;
    let mut out = [0u8; 15];
    let mut i = 0;
    let values = [
        y / 100,
        y % 100,
        mo,
        d,
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
    ];
    for &v in &values[usize::from(!generalized)..] {
        // v < 100: two digits from the table.
        let v = v as usize % 100 * 2;
        out[i..i + 2].copy_from_slice(&DIGIT_PAIRS[v..v + 2]);
        i += 2;
    }
    out[i] = b'Z';
    let tag = if generalized {
        TAG_GENERALIZED_TIME
    } else {
        TAG_UTC_TIME
    };
    Some((tag, out, i + 1))
}

const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// A strict reader of DER: definite, minimal lengths of at most four octets,
/// single-octet tags. It checks structure the signer wrote before it signs,
/// independently of the writer above: it parses what is there rather than
/// writing it again and comparing.
pub struct Reader<'a> {
    rest: &'a [u8],
}

/// One TLV read by [`Reader`].
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    /// The whole TLV, header included.
    pub raw: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { rest: input }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one TLV. Errors are static so that the hot path of a CRL of a
    /// million entries carries no formatting; callers add the context.
    #[inline]
    pub fn read(&mut self) -> Result<Tlv<'a>, &'static str> {
        let input = self.rest;
        let (tag, first) = match input {
            [tag, first, ..] => (*tag, *first),
            _ => return Err("input ends where a TLV should start"),
        };
        if tag & 0x1f == 0x1f {
            return Err("multi-octet tag");
        }
        let (len, hdr) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 {
                return Err("indefinite length");
            }
            if n > 4 {
                return Err("length of more than four octets");
            }
            let octets = input.get(2..2 + n).ok_or("input ends inside a length")?;
            if octets[0] == 0 {
                return Err("length with a leading zero octet");
            }
            let len = octets.iter().fold(0usize, |l, b| (l << 8) | *b as usize);
            if len < 0x80 {
                return Err("long-form length below 128");
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len).ok_or("length overflows")?;
        let raw = input
            .get(..end)
            .ok_or("a TLV runs past the end of its container")?;
        self.rest = &input[end..];
        Ok(Tlv {
            tag,
            content: &raw[hdr..],
            raw,
        })
    }

    /// Reads a TLV that must carry `tag`; returns its content.
    #[inline]
    pub fn expect(&mut self, tag: u8) -> Result<&'a [u8], &'static str> {
        let t = self.read()?;
        if t.tag != tag {
            return Err("unexpected tag");
        }
        Ok(t.content)
    }

    /// Reads a TLV that must be exactly `expected`, header included.
    pub fn expect_raw(&mut self, expected: &[u8]) -> Result<(), &'static str> {
        if self.read()?.raw != expected {
            return Err("differs from what was decided");
        }
        Ok(())
    }

    pub fn end(&self) -> Result<(), &'static str> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err("octets trail")
        }
    }
}

/// The content of a DER INTEGER that must be non-negative: at least one
/// octet, minimal, top bit clear. Returns the magnitude without the 0x00
/// that keeps it positive.
#[inline]
pub fn non_negative_integer(content: &[u8]) -> Result<&[u8], &'static str> {
    match content {
        [] => Err("empty INTEGER"),
        [b, ..] if b & 0x80 != 0 => Err("negative INTEGER"),
        [0, b, ..] if b & 0x80 == 0 => Err("INTEGER not minimally encoded"),
        [0, rest @ ..] if !rest.is_empty() => Ok(rest),
        _ => Ok(content),
    }
}

/// Parses an RFC 5280 Time (UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`, no fractions) to unix seconds. With `x509_rule`,
/// UTCTime is required through 2049 and GeneralizedTime from 2050
/// (RFC 5280 §4.1.2.5).
pub fn parse_time(tag: u8, text: &[u8], x509_rule: bool) -> Result<i64, &'static str> {
    let (year, mo, d, seconds) = check_time(tag, text, x509_rule)?;
    Ok(days_from_civil(i64::from(year), mo, d) * 86_400 + i64::from(seconds))
}

/// Checks a time as [`parse_time`] does; returns its year, month, day and
/// the seconds into that day.
pub fn check_time(
    tag: u8,
    text: &[u8],
    x509_rule: bool,
) -> Result<(u32, u32, u32, u32), &'static str> {
    fn digits(s: &[u8]) -> Result<u32, &'static str> {
        s.iter().try_fold(0u32, |v, c| {
            if c.is_ascii_digit() {
                Ok(v * 10 + u32::from(c - b'0'))
            } else {
                Err("time with a non-digit")
            }
        })
    }
    let (year, rest) = match (tag, text.len()) {
        (TAG_UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (TAG_GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return Err("time is neither YYMMDDHHMMSSZ nor YYYYMMDDHHMMSSZ"),
    };
    if rest[10] != b'Z' {
        return Err("time does not end in Z");
    }
    let (mo, d, h, mi, s) = (
        digits(&rest[0..2])?,
        digits(&rest[2..4])?,
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err("time with a month out of range"),
    };
    if d == 0 || d > month_days || h > 23 || mi > 59 || s > 59 {
        return Err("time with a day, hour, minute or second out of range");
    }
    if x509_rule && (tag == TAG_UTC_TIME) != (1950..2050).contains(&year) {
        return Err("time in the wrong type (UTCTime through 2049, GeneralizedTime after)");
    }
    Ok((year, mo, d, h * 3600 + mi * 60 + s))
}

/// Splits one TLV off the front of `input`: (tag, content, rest). Only used
/// on DER the signer wrote itself or already parsed with a full parser.
pub fn split_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    let content = input.get(hdr..end)?;
    Some((tag, content, &input[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_encodes_like_the_rfc_examples() {
        // ecdsa-with-SHA256
        assert_eq!(
            oid("1.2.840.10045.4.3.2"),
            vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
        );
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(uint(&[0x00, 0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(uint(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let v = tlv(0x04, &[0u8; 300]);
        assert_eq!(&v[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, rest) = split_tlv(&v).unwrap();
        assert_eq!((tag, content.len(), rest.len()), (0x04, 300, 0));
    }

    /// Times from 1950 (where the signer's range starts) to 2100 in uneven
    /// steps, with the edges of the UTCTime range and of leap days.
    fn sample_times() -> Vec<i64> {
        let mut v: Vec<i64> = (0..20_000)
            .map(|i: i64| MIN_TIME + i * 315_569_261 % 4_733_596_800)
            .collect();
        v.push(MIN_TIME);
        for (y, m, d) in [
            (1950, 1, 2),
            (2049, 12, 31),
            (2050, 1, 1),
            (2000, 2, 29),
            (2100, 3, 1),
        ] {
            let day = days_from_civil(y, m, d) * 86_400;
            v.extend([day - 1, day, day + 86_399]);
        }
        v
    }

    #[test]
    fn time_text_writes_what_the_formatting_writers_write_and_reads_back() {
        for t in sample_times() {
            let (tag, text, len) = time_text(t, false).unwrap();
            assert_eq!(tlv(tag, &text[..len]), x509_time(t), "x509 time {t}");
            assert_eq!(parse_time(tag, &text[..len], true), Ok(t), "{t}");
            let (tag, text, len) = time_text(t, true).unwrap();
            assert_eq!(
                tlv(tag, &text[..len]),
                generalized_time(t),
                "generalized {t}"
            );
            assert_eq!(parse_time(tag, &text[..len], false), Ok(t), "{t}");
        }
        let year_10000 = days_from_civil(10_000, 1, 1) * 86_400;
        assert_eq!(time_text(year_10000, false), None);
        assert_eq!(time_text(days_from_civil(-1, 12, 31) * 86_400, true), None);
    }

    #[test]
    fn parse_time_refuses_impossible_dates_and_the_wrong_type() {
        for bad in [
            &b"230230000000Z"[..],
            b"231301000000Z",
            b"230101240000Z",
            b"230101006000Z",
            b"230101000060Z",
            b"230100000000Z",
            b"2301010000000",
            b"23010100000Z",
            b"2301010000+0Z",
        ] {
            assert!(parse_time(TAG_UTC_TIME, bad, true).is_err(), "{bad:?}");
        }
        assert!(parse_time(TAG_UTC_TIME, b"000229000000Z", true).is_ok());
        assert!(parse_time(TAG_GENERALIZED_TIME, b"21000229000000Z", false).is_err());
        // RFC 5280: GeneralizedTime only from 2050 in certificates and CRLs.
        assert!(parse_time(TAG_GENERALIZED_TIME, b"20300101000000Z", true).is_err());
        assert!(parse_time(TAG_GENERALIZED_TIME, b"20300101000000Z", false).is_ok());
        assert!(parse_time(TAG_OCTET_STRING, b"300101000000Z", false).is_err());
    }

    #[test]
    fn the_reader_accepts_only_definite_minimal_lengths() {
        let long = tlv(TAG_OCTET_STRING, &[7u8; 300]);
        let mut r = Reader::new(&long);
        let t = r.read().unwrap();
        assert_eq!(
            (t.tag, t.content.len(), t.raw.len()),
            (TAG_OCTET_STRING, 300, 304)
        );
        assert!(r.is_empty());
        for bad in [
            &[0x04, 0x80][..],                  // indefinite
            &[0x04, 0x81, 0x05, 1, 2, 3, 4, 5], // long form below 128
            &[0x04, 0x82, 0x00, 0x01, 0],       // leading zero octet
            &[0x04, 0x85, 1, 0, 0, 0, 0],       // five length octets
            &[0x04, 0x03, 1, 2],                // runs past the end
            &[0x1f, 0x01, 0x00],                // multi-octet tag
            &[0x04],                            // no length
        ] {
            assert!(Reader::new(bad).read().is_err(), "{bad:02x?}");
        }
        let two = [0x05, 0x00, 0x05, 0x00];
        let mut r = Reader::new(&two);
        assert_eq!(r.expect(TAG_NULL), Ok(&[][..]));
        assert!(r.end().is_err());
        assert_eq!(r.expect(TAG_BOOLEAN), Err("unexpected tag"));
    }

    #[test]
    fn non_negative_integers_must_be_minimal() {
        assert_eq!(non_negative_integer(&[0x00]), Ok(&[0x00][..]));
        assert_eq!(non_negative_integer(&[0x00, 0x80]), Ok(&[0x80][..]));
        assert_eq!(non_negative_integer(&[0x7f, 0x00]), Ok(&[0x7f, 0x00][..]));
        assert!(non_negative_integer(&[]).is_err());
        assert!(non_negative_integer(&[0x80]).is_err());
        assert!(non_negative_integer(&[0x00, 0x7f]).is_err());
    }

    #[test]
    fn seq_and_headers_agree_with_tlv() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536, 16_777_216] {
            let mut h = Vec::new();
            push_header(&mut h, TAG_SEQUENCE, len);
            assert_eq!(h.len(), header_len(len), "{len}");
        }
        let a = [1u8; 100];
        let b = [2u8; 200];
        assert_eq!(
            seq(&[&a, &b]),
            tlv(TAG_SEQUENCE, &[&a[..], &b[..]].concat())
        );
    }

    #[test]
    fn dates_round_trip_and_switch_to_generalized_time_in_2050() {
        for days in [-1, 0, 11_016, 29_220, 47_482, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(x509_time(0), tlv(TAG_UTC_TIME, b"700101000000Z"));
        let t2050 = days_from_civil(2050, 1, 1) * 86_400;
        assert_eq!(
            x509_time(t2050),
            tlv(TAG_GENERALIZED_TIME, b"20500101000000Z")
        );
        assert_eq!(
            generalized_time(1_700_000_000),
            tlv(TAG_GENERALIZED_TIME, b"20231114221320Z")
        );
    }
}
