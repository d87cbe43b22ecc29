//! Distinguished names as operators type them ("CN=Example Root CA,O=Example")
//! and as castellan prints them, shared by the daemon and castellanctl.

use castellan_proto::{CeremonyOp, DistinguishedName, NameAttribute};

pub fn parse_subject(s: &str) -> Result<DistinguishedName, String> {
    let mut attrs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("subject part {part:?} is not KEY=VALUE (e.g. CN=Example Root CA,O=Example)")
        })?;
        let v = v.trim().to_string();
        if v.is_empty() {
            return Err(format!(
                "subject attribute {} has an empty value; give one (e.g. {}=Example) or leave \
                 the attribute out",
                k.trim(),
                k.trim()
            ));
        }
        attrs.push(match k.trim().to_ascii_uppercase().as_str() {
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
    Ok(DistinguishedName(attrs))
}

pub fn format_subject(dn: &DistinguishedName) -> String {
    dn.0.iter()
        .map(|a| match a {
            NameAttribute::CommonName(v) => format!("CN={v}"),
            NameAttribute::Organization(v) => format!("O={v}"),
            NameAttribute::OrganizationalUnit(v) => format!("OU={v}"),
            NameAttribute::Country(v) => format!("C={v}"),
            NameAttribute::Locality(v) => format!("L={v}"),
            NameAttribute::State(v) => format!("ST={v}"),
            NameAttribute::SerialNumber(v) => format!("serialNumber={v}"),
            NameAttribute::DomainComponent(v) => format!("DC={v}"),
        })
        .collect::<Vec<_>>()
        .join(",")
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
