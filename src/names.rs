//! Distinguished names as operators type them ("CN=Example Root CA,O=Example")
//! and as castellan prints them, shared by the daemon and castellanctl.

use castellan_proto::{CeremonyOp, DistinguishedName, NameAttribute};

/// Parses a subject written as in RFC 4514 ("CN=Example Root CA,O=Example"):
/// the most specific attribute first, so the DER name (most significant
/// first) holds the attributes in the reverse order. `\,` and the other
/// RFC 4514 escapes (`\+ \" \\ \< \> \; \= \# \ ` and `\XX` in hex) put
/// those characters into a value.
pub fn parse_subject(s: &str) -> Result<DistinguishedName, String> {
    let mut attrs = Vec::new();
    for part in split_rdns(s)? {
        let (k, v) = (part.0.trim(), part.1);
        if k.is_empty() && v.is_empty() {
            continue;
        }
        if !part.2 {
            return Err(format!(
                "subject part {k:?} is not KEY=VALUE (e.g. CN=Example Root CA,O=Example)"
            ));
        }
        if v.is_empty() {
            return Err(format!(
                "subject attribute {k} has an empty value; give one (e.g. {k}=Example) or leave \
                 the attribute out"
            ));
        }
        attrs.push(match k.to_ascii_uppercase().as_str() {
            "CN" => NameAttribute::CommonName(v),
            "O" => NameAttribute::Organization(v),
            "OU" => NameAttribute::OrganizationalUnit(v),
            "C" => NameAttribute::Country(v),
            "L" => NameAttribute::Locality(v),
            "ST" => NameAttribute::State(v),
            "SERIALNUMBER" => NameAttribute::SerialNumber(v),
            "DC" => NameAttribute::DomainComponent(v),
            other => {
                return Err(format!(
                    "subject attribute {other:?} is not supported; use CN, O, OU, C, L, ST, serialNumber, DC"
                ));
            }
        });
    }
    if attrs.is_empty() {
        return Err("the subject is empty; e.g. \"CN=Example Root CA,O=Example\"".into());
    }
    attrs.reverse();
    Ok(DistinguishedName(attrs))
}

/// The parts of an RFC 4514 string: (key, unescaped value, whether there
/// was a '='), split at unescaped commas.
fn split_rdns(s: &str) -> Result<Vec<(String, String, bool)>, String> {
    let mut out = Vec::new();
    let (mut key, mut value, mut has_eq) = (String::new(), String::new(), false);
    // Trailing spaces of a value are dropped unless escaped: remember how
    // long the value was at its last escaped character.
    let mut kept = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(n) = chars.next() else {
                    return Err(
                        "the subject ends in a lone '\\'; escape a backslash as '\\\\'".into(),
                    );
                };
                let ch = if n.is_ascii_hexdigit() {
                    let m = chars.next().filter(|m| m.is_ascii_hexdigit()).ok_or_else(|| {
                        format!("'\\{n}' in the subject is neither an escaped special character nor two hex digits")
                    })?;
                    let byte = u8::from_str_radix(&format!("{n}{m}"), 16).unwrap_or(b'?');
                    if !byte.is_ascii() {
                        return Err("a '\\XX' escape in the subject names a non-ASCII octet; type the character itself".into());
                    }
                    char::from(byte)
                } else if matches!(
                    n,
                    ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#' | ' '
                ) {
                    n
                } else {
                    return Err(format!(
                        "'\\{n}' in the subject is neither an escaped special character nor two hex digits"
                    ));
                };
                if has_eq {
                    value.push(ch);
                    kept = value.len();
                } else {
                    key.push(ch);
                }
            }
            ',' => {
                value.truncate(value.trim_end().len().max(kept));
                out.push((std::mem::take(&mut key), std::mem::take(&mut value), has_eq));
                has_eq = false;
                kept = 0;
            }
            '+' if has_eq => {
                return Err("multi-valued name parts ('+') are not supported; write the attributes apart, separated by commas (or escape a plus in a value as '\\+')".into());
            }
            '=' if !has_eq => has_eq = true,
            c if has_eq => {
                if !(value.is_empty() && c == ' ') {
                    value.push(c);
                }
            }
            c => key.push(c),
        }
    }
    value.truncate(value.trim_end().len().max(kept));
    out.push((key, value, has_eq));
    Ok(out)
}

/// A subject as RFC 4514 writes it: the most specific attribute first
/// (the reverse of the DER order), special characters escaped; what
/// [`parse_subject`] reads back to the same name.
pub fn format_subject(dn: &DistinguishedName) -> String {
    dn.0.iter()
        .rev()
        .map(|a| {
            let (k, v) = match a {
                NameAttribute::CommonName(v) => ("CN", v),
                NameAttribute::Organization(v) => ("O", v),
                NameAttribute::OrganizationalUnit(v) => ("OU", v),
                NameAttribute::Country(v) => ("C", v),
                NameAttribute::Locality(v) => ("L", v),
                NameAttribute::State(v) => ("ST", v),
                NameAttribute::SerialNumber(v) => ("serialNumber", v),
                NameAttribute::DomainComponent(v) => ("DC", v),
            };
            format!("{k}={}", escape_value(v))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// RFC 4514 section 2.4 escaping of an attribute value.
fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One line saying what a ceremony would do, for custodians and logs.
pub fn describe_ceremony(op: &CeremonyOp) -> String {
    match op {
        CeremonyOp::CreateRoot(p) | CeremonyOp::CreateIntermediate(p) => format!(
            "create CA {:?} ({}, parent {}, {} days, pathLen {}) subject {}",
            p.ca_id,
            p.algorithm.as_str(),
            p.parent.as_deref().unwrap_or("none: self-signed root"),
            (p.validity.not_after - p.validity.not_before) / 86_400,
            p.path_len.map_or("none".into(), |v| v.to_string()),
            format_subject(&p.subject)
        ),
        CeremonyOp::Rotate(r) => format!(
            "rotate CA {:?} to a new {} key as CA {:?}",
            r.ca_id,
            r.algorithm.as_str(),
            r.new_ca_id
        ),
        CeremonyOp::CrossSign(c) => format!("cross-sign a CA certificate with {:?}", c.issuer),
        CeremonyOp::ChangeCustodians(s) => format!(
            "replace the custodian set with {} of [{}]",
            s.threshold,
            s.custodians
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(s: &str) -> Vec<NameAttribute> {
        parse_subject(s).expect("a subject").0
    }

    #[test]
    fn a_subject_is_read_as_rfc_4514_most_specific_first() {
        // The DER order is the reverse: most significant first.
        assert_eq!(
            attrs("CN=Example Root CA, O=Example,C=DE"),
            vec![
                NameAttribute::Country("DE".into()),
                NameAttribute::Organization("Example".into()),
                NameAttribute::CommonName("Example Root CA".into()),
            ]
        );
        assert_eq!(
            format_subject(&parse_subject("CN=Example Root CA, O=Example,C=DE").unwrap()),
            "CN=Example Root CA,O=Example,C=DE"
        );
    }

    #[test]
    fn escaped_specials_are_part_of_a_value_and_round_trip() {
        let dn = parse_subject(r"CN=Smith\, J.,O=A\+B \#1\ ,OU=\2Cx").unwrap();
        assert_eq!(
            dn.0,
            vec![
                NameAttribute::OrganizationalUnit(",x".into()),
                NameAttribute::Organization("A+B #1 ".into()),
                NameAttribute::CommonName("Smith, J.".into()),
            ]
        );
        let text = format_subject(&dn);
        assert_eq!(parse_subject(&text).unwrap(), dn, "{text}");
        let lead = DistinguishedName(vec![NameAttribute::CommonName("#tag ".into())]);
        assert_eq!(format_subject(&lead), r"CN=\#tag\ ");
        assert_eq!(parse_subject(&format_subject(&lead)).unwrap(), lead);
    }

    #[test]
    fn what_cannot_be_a_subject_is_refused_with_what_to_type() {
        for (bad, says) in [
            ("", "empty"),
            ("CN=", "empty value"),
            ("CN", "KEY=VALUE"),
            ("CN=a+O=b", "multi-valued"),
            ("CN=a\\", "lone"),
            ("CN=a\\zz", "hex"),
            ("XX=a", "not supported"),
        ] {
            let e = parse_subject(bad).expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
