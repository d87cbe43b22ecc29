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
    tlv(TAG_SEQUENCE, &parts.concat())
}

pub fn set(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SET, &parts.concat())
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
    let arcs: Vec<u64> = dotted.split('.').filter_map(|a| a.parse().ok()).collect();
    let mut content = Vec::new();
    if arcs.len() >= 2 {
        push_base128(&mut content, arcs[0] * 40 + arcs[1]);
        for a in &arcs[2..] {
            push_base128(&mut content, *a);
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
