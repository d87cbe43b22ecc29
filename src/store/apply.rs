//! Applying one event to the projections.
//!
//! Deterministic: the result depends only on the event (its payload, seq,
//! time and actor) and the projections before it, so replaying the log into
//! empty tables gives the same bytes. An event that meets an impossible
//! state (a result for an unknown intent, a second approval by the same
//! custodian) changes nothing and is logged: commands are validated before
//! they become events, so this is a bug or a replay of an old quirk, and the
//! event stays in the log as the record of what happened. The only errors
//! are storage errors, which abort the whole batch.

use crate::events::{Event, EventPayload};

use super::records::{
    ApprovalRecord, CROSS_CERTIFICATE_PROFILE, CaRecord, CeremonyRecord, CeremonyStatus,
    CertRecord, CertState, CheckpointRecord, CrlRecord, IntentRecord, ResponderRecord, Revocation,
    SignerKeys,
};
use super::tables::{
    BY_IDENTITY, BY_ISSUER, CAS, CEREMONIES, CERTS, CHECKPOINTS, CRLS, GRAPH, INTENTS, RESPONDERS,
    REVOKED, SIGNER, SIGNER_KEY, WriteTables, ca_node, checkpoint_key, compound,
};

fn enc<R: serde::Serialize>(r: &R) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(r).map_err(|e| format!("encoding a projection record: {e}"))
}

fn skip(ev: &Event, why: &str) {
    tracing::warn!(
        seq = ev.seq,
        kind = ev.payload.kind(),
        "event changes no projection: {why}"
    );
}

fn edge(t: &mut WriteTables<'_>, from: &str, to: &str) -> Result<(), String> {
    t.put(GRAPH, &compound(from, to.as_bytes()), &[])
}

fn insert_cert(t: &mut WriteTables<'_>, c: &CertRecord) -> Result<(), String> {
    t.put(CERTS, &c.serial, &enc(c)?)?;
    t.put(BY_IDENTITY, &compound(&c.identity, &c.serial), &[])?;
    // Keyed in issuance order, so that a batch of issuances appends to the
    // tail of each issuer's range instead of dirtying a random page each.
    // The graph's CA → certificate and certificate → identity edges are
    // this index and the record itself (see `ReadView::children`), not
    // stored twice.
    // The value is notAfter (i64 big-endian): which certificates still
    // need OCSP answers is read from this index alone.
    let mut rest = c.issued_seq.to_be_bytes().to_vec();
    rest.extend_from_slice(&c.serial);
    t.put(
        BY_ISSUER,
        &compound(&c.issuer, &rest),
        &c.not_after.to_be_bytes(),
    )
}

fn cert_from_intent(
    i: IntentRecord,
    serial: &[u8],
    der: Option<Vec<u8>>,
    state: CertState,
    seq: u64,
) -> CertRecord {
    CertRecord {
        serial: serial.to_vec(),
        issuer: i.issuer,
        profile: i.profile,
        identity: i.identity,
        subject: i.subject,
        sans: i.sans,
        not_before: i.not_before,
        not_after: i.not_after,
        certificate_der: der,
        state,
        request_id: i.request_id,
        issued_seq: seq,
        revocation: None,
    }
}

pub(crate) fn apply(t: &mut WriteTables<'_>, ev: &Event) -> Result<(), String> {
    match &ev.payload {
        EventPayload::DaemonStarted { .. }
        | EventPayload::IssuanceRefused { .. }
        | EventPayload::ConfigReloaded { .. } => Ok(()),
        EventPayload::SignerKeysObserved {
            audit_spki_der,
            audit_algorithm,
            custodians,
        } => {
            let r = SignerKeys {
                audit_spki_der: audit_spki_der.clone(),
                audit_algorithm: *audit_algorithm,
                custodians: custodians.clone(),
            };
            t.put(SIGNER, SIGNER_KEY, &enc(&r)?)
        }
        EventPayload::CeremonyOpened { ceremony_id, op } => {
            if t.load::<CeremonyRecord>(CEREMONIES, ceremony_id)?.is_some() {
                skip(ev, "the ceremony id is already open");
                return Ok(());
            }
            let r = CeremonyRecord {
                ceremony_id: *ceremony_id,
                op: op.clone(),
                opened_by: ev.actor.clone(),
                opened_ms: ev.time_ms,
                approvals: Vec::new(),
                status: CeremonyStatus::Open,
                last_error: None,
            };
            t.put(CEREMONIES, ceremony_id, &enc(&r)?)
        }
        EventPayload::CeremonyApproved {
            ceremony_id,
            custodian,
            custodian_name,
            signature,
        } => {
            let Some(mut r) = t.load::<CeremonyRecord>(CEREMONIES, ceremony_id)? else {
                skip(ev, "no such ceremony");
                return Ok(());
            };
            if r.status != CeremonyStatus::Open {
                skip(ev, "the ceremony is no longer open");
                return Ok(());
            }
            if r.approvals.iter().any(|a| a.custodian == *custodian) {
                skip(
                    ev,
                    "this custodian already approved (an approval counts once)",
                );
                return Ok(());
            }
            r.approvals.push(ApprovalRecord {
                custodian: *custodian,
                name: custodian_name.clone(),
                signature: signature.clone(),
                actor: ev.actor.clone(),
                time_ms: ev.time_ms,
            });
            t.put(CEREMONIES, ceremony_id, &enc(&r)?)
        }
        EventPayload::CeremonyExecuted { ceremony_id } => {
            let Some(mut r) = t.load::<CeremonyRecord>(CEREMONIES, ceremony_id)? else {
                skip(ev, "no such ceremony");
                return Ok(());
            };
            if r.status != CeremonyStatus::Open {
                skip(ev, "the ceremony was already executed");
                return Ok(());
            }
            r.status = CeremonyStatus::Executed { seq: ev.seq };
            t.put(CEREMONIES, ceremony_id, &enc(&r)?)
        }
        EventPayload::CeremonyFailed {
            ceremony_id,
            reason,
        } => {
            let Some(mut r) = t.load::<CeremonyRecord>(CEREMONIES, ceremony_id)? else {
                skip(ev, "no such ceremony");
                return Ok(());
            };
            if r.status != CeremonyStatus::Open {
                skip(ev, "the ceremony was already executed");
                return Ok(());
            }
            r.last_error = Some(reason.clone());
            t.put(CEREMONIES, ceremony_id, &enc(&r)?)
        }
        EventPayload::CaRegistered {
            ca_id,
            parent,
            algorithm,
            status,
            certificate_der,
        } => {
            let old = t.load::<CaRecord>(CAS, ca_id.as_bytes())?;
            let node = ca_node(ca_id);
            if let Some(old_parent) = old.as_ref().and_then(|o| o.parent.as_ref())
                && Some(old_parent) != parent.as_ref()
            {
                t.del(GRAPH, &compound(&ca_node(old_parent), node.as_bytes()))?;
            }
            let r = CaRecord {
                ca_id: ca_id.clone(),
                parent: parent.clone(),
                algorithm: *algorithm,
                status: *status,
                certificate_der: certificate_der.clone(),
                registered_seq: old.map_or(ev.seq, |o| o.registered_seq),
            };
            // The only write to `p.cas`: another event that writes it must
            // be listed in `EventPayload::changes_cas` (the daemon caches
            // issuers and chains until that says the CAs changed).
            t.put(CAS, ca_id.as_bytes(), &enc(&r)?)?;
            if let Some(p) = parent {
                edge(t, &ca_node(p), &node)?;
            }
            Ok(())
        }
        EventPayload::IssuanceIntended {
            request_id,
            issuer,
            profile,
            identity,
            subject,
            sans,
            spki_sha256,
            not_before,
            not_after,
        } => {
            if t.load::<IntentRecord>(INTENTS, request_id)?.is_some() {
                skip(ev, "an intent with this request id is pending");
                return Ok(());
            }
            let r = IntentRecord {
                request_id: *request_id,
                issuer: issuer.clone(),
                profile: profile.clone(),
                identity: identity.clone(),
                subject: subject.clone(),
                sans: sans.clone(),
                spki_sha256: *spki_sha256,
                not_before: *not_before,
                not_after: *not_after,
                seq: ev.seq,
                time_ms: ev.time_ms,
            };
            t.put(INTENTS, request_id, &enc(&r)?)
        }
        EventPayload::CertificateIssued {
            request_id,
            serial,
            certificate_der,
            ..
        } => {
            let Some(intent) = t.load::<IntentRecord>(INTENTS, request_id)? else {
                skip(ev, "no pending intent for this request id");
                return Ok(());
            };
            if t.load::<CertRecord>(CERTS, serial)?.is_some() {
                skip(ev, "a certificate with this serial is already recorded");
                return Ok(());
            }
            t.del(INTENTS, request_id)?;
            let c = cert_from_intent(
                intent,
                serial,
                Some(certificate_der.clone()),
                CertState::Issued,
                ev.seq,
            );
            insert_cert(t, &c)
        }
        EventPayload::IssuanceFailed { request_id, .. } => {
            if t.load::<IntentRecord>(INTENTS, request_id)?.is_none() {
                skip(ev, "no pending intent for this request id");
                return Ok(());
            }
            t.del(INTENTS, request_id)
        }
        EventPayload::IssuanceRecovered { request_id, serial } => {
            let Some(intent) = t.load::<IntentRecord>(INTENTS, request_id)? else {
                skip(ev, "no pending intent for this request id");
                return Ok(());
            };
            t.del(INTENTS, request_id)?;
            let Some(serial) = serial else {
                return Ok(());
            };
            if t.load::<CertRecord>(CERTS, serial)?.is_some() {
                skip(ev, "a certificate with this serial is already recorded");
                return Ok(());
            }
            let c = cert_from_intent(intent, serial, None, CertState::PossiblyIssued, ev.seq);
            insert_cert(t, &c)
        }
        EventPayload::CertificateRevoked {
            serial,
            issuer,
            reason,
            revoked_at,
            invalidity_date,
        } => {
            let Some(mut c) = t.load::<CertRecord>(CERTS, serial)? else {
                skip(ev, "no certificate with this serial");
                return Ok(());
            };
            if c.issuer != *issuer {
                skip(ev, "the certificate has another issuer");
                return Ok(());
            }
            if c.revocation.is_some() {
                skip(ev, "the certificate is already revoked");
                return Ok(());
            }
            c.state = CertState::Revoked;
            let revocation = Revocation {
                reason: *reason,
                revoked_at: *revoked_at,
                invalidity_date: *invalidity_date,
                seq: ev.seq,
            };
            let entry = enc(&revocation)?;
            c.revocation = Some(revocation);
            t.put(CERTS, serial, &enc(&c)?)?;
            t.put(REVOKED, &compound(&c.issuer, serial), &entry)
        }
        EventPayload::CrossCertificateIssued {
            ceremony_id,
            issuer,
            serial,
            subject,
            not_before,
            not_after,
            certificate_der,
            ..
        } => {
            let Some(mut cer) = t.load::<CeremonyRecord>(CEREMONIES, ceremony_id)? else {
                skip(ev, "no such ceremony");
                return Ok(());
            };
            let CeremonyStatus::Executed { seq } = cer.status else {
                skip(
                    ev,
                    "the ceremony is not executed, or already has its certificate",
                );
                return Ok(());
            };
            if t.load::<CertRecord>(CERTS, serial)?.is_some() {
                skip(ev, "a certificate with this serial is already recorded");
                return Ok(());
            }
            cer.status = CeremonyStatus::ExecutedWithCertificate {
                seq,
                serial: serial.clone(),
            };
            t.put(CEREMONIES, ceremony_id, &enc(&cer)?)?;
            let c = CertRecord {
                serial: serial.clone(),
                issuer: issuer.clone(),
                profile: CROSS_CERTIFICATE_PROFILE.into(),
                identity: crate::names::format_subject(subject),
                subject: subject.clone(),
                sans: Vec::new(),
                not_before: *not_before,
                not_after: *not_after,
                certificate_der: Some(certificate_der.clone()),
                state: CertState::Issued,
                request_id: *ceremony_id,
                issued_seq: ev.seq,
                revocation: None,
            };
            insert_cert(t, &c)
        }
        EventPayload::CheckpointSigned {
            sequence,
            head_hash,
            time,
            signature,
        } => {
            let r = CheckpointRecord {
                sequence: *sequence,
                head_hash: *head_hash,
                time: *time,
                signature: signature.clone(),
                seq: ev.seq,
            };
            t.put(CHECKPOINTS, &checkpoint_key(ev.seq), &enc(&r)?)
        }
        EventPayload::ResponderRotated {
            issuer,
            certificate_der,
        } => {
            let (not_before, not_after) = cert_validity(certificate_der).unwrap_or((0, 0));
            let r = ResponderRecord {
                issuer: issuer.clone(),
                certificate_der: certificate_der.clone(),
                not_before,
                not_after,
                seq: ev.seq,
            };
            t.put(RESPONDERS, issuer.as_bytes(), &enc(&r)?)
        }
        EventPayload::CrlPublished {
            issuer,
            crl_number,
            this_update,
            next_update,
            entries,
            sha256,
            as_of,
            emergency_validity,
        } => {
            let r = CrlRecord {
                issuer: issuer.clone(),
                crl_number: *crl_number,
                this_update: *this_update,
                next_update: *next_update,
                entries: *entries,
                sha256: *sha256,
                as_of: *as_of,
                emergency_validity: *emergency_validity,
                seq: ev.seq,
            };
            t.put(CRLS, issuer.as_bytes(), &enc(&r)?)
        }
    }
}

/// (notBefore, notAfter) of a certificate, in Unix seconds.
pub(crate) fn cert_validity(der: &[u8]) -> Option<(i64, i64)> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let v = cert.tbs_certificate().validity();
    Some((
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    ))
}
