//! The control daemon's domain: ceremonies, issuance, revocation and audit,
//! on top of the event store and the signer pool. Each method is what one
//! admin API route does; the HTTP layer authenticates, checks the role and
//! maps errors.

use crate::api::*;
use crate::events::Actor;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    pub role: Role,
}

pub struct Daemon {
    _private: (),
}

fn unwired() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "this operation is not available yet",
    )
}

impl Daemon {
    pub async fn status(&self, _c: &Caller) -> Result<StatusView, ApiError> {
        Err(unwired())
    }
    /// (signer reachable, log writable)
    pub async fn ready(&self) -> (bool, bool) {
        (false, false)
    }
    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        String::new()
    }
    pub async fn ceremonies(&self, _c: &Caller) -> Result<Vec<CeremonyView>, ApiError> {
        Err(unwired())
    }
    pub async fn open_ceremony(
        &self,
        _c: &Caller,
        _r: OpenCeremony,
    ) -> Result<CeremonyView, ApiError> {
        Err(unwired())
    }
    pub async fn ceremony(&self, _c: &Caller, _id: &str) -> Result<CeremonyView, ApiError> {
        Err(unwired())
    }
    pub async fn approve_ceremony(
        &self,
        _c: &Caller,
        _id: &str,
        _r: ApproveCeremony,
    ) -> Result<CeremonyView, ApiError> {
        Err(unwired())
    }
    pub async fn execute_ceremony(&self, _c: &Caller, _id: &str) -> Result<CeremonyView, ApiError> {
        Err(unwired())
    }
    pub async fn cas(&self, _c: &Caller) -> Result<Vec<CaView>, ApiError> {
        Err(unwired())
    }
    pub async fn ca(&self, _c: &Caller, _id: &str) -> Result<CaView, ApiError> {
        Err(unwired())
    }
    pub async fn issue(&self, _c: &Caller, _r: IssueRequest) -> Result<IssuedView, ApiError> {
        Err(unwired())
    }
    pub async fn certificates(
        &self,
        _c: &Caller,
        _q: CertQuery,
    ) -> Result<Vec<CertView>, ApiError> {
        Err(unwired())
    }
    pub async fn certificate(&self, _c: &Caller, _serial_hex: &str) -> Result<CertView, ApiError> {
        Err(unwired())
    }
    pub async fn revoke(
        &self,
        _c: &Caller,
        _serial_hex: &str,
        _r: RevokeRequest,
    ) -> Result<CertView, ApiError> {
        Err(unwired())
    }
    pub async fn audit_verify(&self, _c: &Caller) -> Result<VerifyView, ApiError> {
        Err(unwired())
    }
    pub async fn audit_log(&self, _c: &Caller, _q: LogQuery) -> Result<Vec<EventView>, ApiError> {
        Err(unwired())
    }
    pub async fn checkpoint(&self, _c: &Caller) -> Result<CheckpointView, ApiError> {
        Err(unwired())
    }
}
