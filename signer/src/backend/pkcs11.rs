//! The PKCS#11 backend: keys generated and kept on a token (an HSM, a smart
//! card, SoftHSM2 in tests), marked sensitive and never extractable.
//!
//! # Invariants
//! - Private keys are created with `CKA_SENSITIVE` true, `CKA_EXTRACTABLE`
//!   false and only `CKA_SIGN` among their usages, so neither castellan nor
//!   anyone holding the PIN can read them out or use them to decrypt.
//! - The PIN lives only in a `SecretString` (kept to log in again after a
//!   token reset) and never appears in an error or a log line.
//! - A module is initialised once per process and finalised when its last
//!   backend is dropped, after every session of that backend is closed.
//! - `sign` does no object search once a label's handle is cached; a handle
//!   that goes stale (token reset, session lost) is forgotten and the
//!   operation retried once after logging in again.
//! - Keys on the token must not be deleted or replaced behind castellan's
//!   back: cached handles assume a label keeps naming the same key. (The
//!   signer verifies every signature against the certified key anyway.)

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError, RwLock};

use castellan_proto::Algorithm;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::{ExposeSecret, SecretString};

use super::{
    Backend, BackendError, ec_alg_from_curve_oid_der, ec_curve_oid_der, ec_point_len, ec_spki_der,
    ecdsa_raw_to_der, rsa_spki_der,
};

/// PKCS#11 labels are byte strings; this bound only keeps errors readable.
pub const MAX_LABEL_LEN: usize = 255;
/// Idle sessions kept open; more are opened under load and closed after.
const MAX_IDLE_SESSIONS: usize = 32;
const RSA_BITS: usize = 3072;
const RSA_PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// Modules initialised in this process, with how many backends use each.
/// `C_Initialize` is per process: a second one fails, and one `C_Finalize`
/// would pull the module from under every other backend on it.
static MODULES: Mutex<Vec<LoadedModule>> = Mutex::new(Vec::new());

struct LoadedModule {
    path: PathBuf,
    ctx: Pkcs11,
    users: usize,
}

/// One backend's share of an initialised module; finalises on last drop.
struct ModuleRef {
    path: PathBuf,
    ctx: Pkcs11,
}

impl ModuleRef {
    fn acquire(module: &Path) -> Result<ModuleRef, BackendError> {
        let path = fs::canonicalize(module).map_err(|e| {
            BackendError::Failed(format!(
                "cannot find the PKCS#11 module {}: {e}; check the module path",
                module.display()
            ))
        })?;
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = modules.iter_mut().find(|m| m.path == path) {
            m.users += 1;
            return Ok(ModuleRef {
                path,
                ctx: m.ctx.clone(),
            });
        }
        let ctx = Pkcs11::new(&path).map_err(|e| {
            BackendError::Failed(format!(
                "cannot load the PKCS#11 module {}: {e}; check the module path",
                path.display()
            ))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                return Err(BackendError::Failed(format!(
                    "the PKCS#11 module {} was initialised by other code in this process; \
                     castellan must own the module",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(BackendError::Failed(format!(
                    "cannot initialise the PKCS#11 module {}: {e}; check the module path and \
                     its configuration",
                    path.display()
                )));
            }
        }
        modules.push(LoadedModule {
            path: path.clone(),
            ctx: ctx.clone(),
            users: 1,
        });
        Ok(ModuleRef { path, ctx })
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(i) = modules.iter().position(|m| m.path == self.path) else {
            return;
        };
        modules[i].users = modules[i].users.saturating_sub(1);
        if modules[i].users == 0 {
            let m = modules.swap_remove(i);
            if let Err(e) = m.ctx.finalize() {
                tracing::warn!(module = %self.path.display(), error = %e, "C_Finalize failed");
            }
        }
    }
}

/// What the token did wrong, before the label and hints are attached.
#[derive(Debug)]
enum Fault {
    Ck(&'static str, CkError),
    Backend(BackendError),
}

impl From<BackendError> for Fault {
    fn from(e: BackendError) -> Self {
        Fault::Backend(e)
    }
}

fn ck(what: &'static str) -> impl FnOnce(CkError) -> Fault {
    move |e| Fault::Ck(what, e)
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

impl Fault {
    /// Errors after which a new login and fresh handles may succeed.
    fn stale(&self) -> bool {
        matches!(
            self,
            Fault::Ck(
                _,
                CkError::Pkcs11(
                    RvError::SessionHandleInvalid
                        | RvError::SessionClosed
                        | RvError::UserNotLoggedIn
                        | RvError::ObjectHandleInvalid
                        | RvError::KeyHandleInvalid,
                    _
                )
            )
        )
    }

    fn into_backend(self, token: &str) -> BackendError {
        let (what, e) = match self {
            Fault::Backend(b) => return b,
            Fault::Ck(what, e) => (what, e),
        };
        let hint = match rv(&e) {
            Some(
                RvError::MechanismInvalid
                | RvError::DomainParamsInvalid
                | RvError::CurveNotSupported
                | RvError::KeySizeRange,
            ) => {
                return BackendError::Unsupported(format!(
                    "PKCS#11 {what} on token {token:?}: {e}"
                ));
            }
            Some(RvError::PinIncorrect) => {
                "the token refused the PIN: check the configured PIN (tokens lock after \
                 repeated failures)"
            }
            Some(RvError::PinLocked) => "the user PIN is locked: unlock it with the SO PIN",
            Some(RvError::PinExpired) => "the user PIN has expired: set a new one",
            Some(RvError::TokenNotPresent | RvError::DeviceRemoved) => {
                "the token is not present: check that it is plugged in or reachable"
            }
            Some(RvError::UserNotLoggedIn) => "the session is not logged in: check the PIN",
            _ => "check that the token is present, the PIN, and the module path",
        };
        BackendError::Failed(format!(
            "PKCS#11 {what} on token {token:?} failed ({e}): {hint}"
        ))
    }
}

#[derive(Clone, Copy, Debug)]
struct KeyRef {
    alg: Algorithm,
    private: ObjectHandle,
}

/// A PKCS#11 token holding castellan's keys. Send + Sync: sessions are
/// pooled and each is used by one thread at a time.
pub struct Pkcs11Backend {
    /// Idle logged-in sessions (PKCS#11 login state is per application and
    /// token, so every session opened after the login is logged in).
    pool: Mutex<Vec<Session>>,
    /// Private key handles by label.
    handles: RwLock<HashMap<String, KeyRef>>,
    /// The R/W session that logged in; held so the token stays logged in,
    /// and used to generate keys (token objects need a R/W session).
    login: Mutex<Session>,
    pin: SecretString,
    slot: Slot,
    token_label: String,
    mechanisms: Vec<MechanismType>,
    /// Declared last: dropped (and the module finalised) after every session.
    module: ModuleRef,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.module.path)
            .field("token", &self.token_label)
            .finish_non_exhaustive()
    }
}

fn login_user(session: &Session, pin: &SecretString) -> Result<(), Fault> {
    let pin = SecretString::from(pin.expose_secret());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(Fault::Ck("login (C_Login)", e)),
    }
}

fn label_ok(label: &str) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL_LEN
}

/// The single object of `class` labelled `label`, if any.
fn find_one(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, Fault> {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(ck("object search (C_FindObjects)"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(Fault::Backend(BackendError::Failed(format!(
            "the token holds {} {class} objects labelled {label:?}; castellan needs exactly \
             one: delete or relabel the extra ones",
            many.len()
        )))),
    }
}

fn key_type(session: &Session, object: ObjectHandle) -> Result<KeyType, Fault> {
    let attrs = session
        .get_attributes(object, &[AttributeType::KeyType])
        .map_err(ck("reading the key type"))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| Fault::Backend(BackendError::Failed("the key has no CKA_KEY_TYPE".into())))
}

fn bytes_attr(
    session: &Session,
    object: ObjectHandle,
    ty: AttributeType,
    what: &'static str,
) -> Result<Vec<u8>, Fault> {
    let attrs = session.get_attributes(object, &[ty]).map_err(ck(what))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcParams(v)
            | Attribute::EcPoint(v)
            | Attribute::Modulus(v)
            | Attribute::PublicExponent(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| Fault::Backend(BackendError::Failed(format!("{what}: attribute missing"))))
}

fn ec_alg(params: &[u8]) -> Result<Algorithm, Fault> {
    ec_alg_from_curve_oid_der(params).ok_or_else(|| {
        Fault::Backend(BackendError::Unsupported(
            "the key is on an elliptic curve other than P-256 and P-384".into(),
        ))
    })
}

fn rsa_alg(modulus: &[u8]) -> Result<Algorithm, Fault> {
    let digits = &modulus[modulus.iter().take_while(|b| **b == 0).count()..];
    let bits = digits
        .first()
        .map_or(0, |top| digits.len() * 8 - top.leading_zeros() as usize);
    if bits == RSA_BITS {
        Ok(Algorithm::Rsa3072)
    } else {
        Err(Fault::Backend(BackendError::Unsupported(format!(
            "the key is RSA with {bits} bits; castellan signs with RSA-{RSA_BITS} only"
        ))))
    }
}

/// The algorithm of a private key, from its own attributes.
fn private_key_alg(session: &Session, key: ObjectHandle) -> Result<Algorithm, Fault> {
    let kt = key_type(session, key)?;
    if kt == KeyType::EC {
        ec_alg(&bytes_attr(
            session,
            key,
            AttributeType::EcParams,
            "reading CKA_EC_PARAMS",
        )?)
    } else if kt == KeyType::RSA {
        rsa_alg(&bytes_attr(
            session,
            key,
            AttributeType::Modulus,
            "reading CKA_MODULUS",
        )?)
    } else {
        Err(Fault::Backend(BackendError::Unsupported(format!(
            "the key's type {kt} is neither EC nor RSA"
        ))))
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point (PKCS#11 2.40);
/// some tokens return the bare point. Accept both, nothing else.
fn unwrap_ec_point(alg: Algorithm, value: &[u8]) -> Result<&[u8], Fault> {
    let len = ec_point_len(alg).unwrap_or(0);
    match value {
        [0x04, n, rest @ ..] if usize::from(*n) == len && rest.len() == len && len < 0x80 => {
            Ok(rest)
        }
        raw if raw.len() == len => Ok(raw),
        _ => Err(Fault::Backend(BackendError::Failed(format!(
            "the token returned a CKA_EC_POINT of {} bytes, not a {}-byte point",
            value.len(),
            len
        )))),
    }
}

/// DER SubjectPublicKeyInfo of a public key object, and its algorithm.
fn public_spki(session: &Session, key: ObjectHandle) -> Result<(Algorithm, Vec<u8>), Fault> {
    let kt = key_type(session, key)?;
    if kt == KeyType::EC {
        let alg = ec_alg(&bytes_attr(
            session,
            key,
            AttributeType::EcParams,
            "reading CKA_EC_PARAMS",
        )?)?;
        let value = bytes_attr(session, key, AttributeType::EcPoint, "reading CKA_EC_POINT")?;
        Ok((alg, ec_spki_der(alg, unwrap_ec_point(alg, &value)?)?))
    } else if kt == KeyType::RSA {
        let n = bytes_attr(session, key, AttributeType::Modulus, "reading CKA_MODULUS")?;
        let e = bytes_attr(
            session,
            key,
            AttributeType::PublicExponent,
            "reading CKA_PUBLIC_EXPONENT",
        )?;
        Ok((rsa_alg(&n)?, rsa_spki_der(&n, &e)?))
    } else {
        Err(Fault::Backend(BackendError::Unsupported(format!(
            "the key's type {kt} is neither EC nor RSA"
        ))))
    }
}

impl Pkcs11Backend {
    /// Loads and initialises `module` (once per process), finds the token
    /// labelled `token_label` and logs in as the user.
    pub fn open(
        module: &Path,
        token_label: &str,
        pin: &SecretString,
    ) -> Result<Self, BackendError> {
        let module = ModuleRef::acquire(module)?;
        let fail = |f: Fault| f.into_backend(token_label);
        let slots = module
            .ctx
            .get_slots_with_token()
            .map_err(ck("listing slots (C_GetSlotList)"))
            .map_err(fail)?;
        let mut present = Vec::new();
        let mut matching = Vec::new();
        for slot in slots {
            let info = module
                .ctx
                .get_token_info(slot)
                .map_err(ck("reading token information (C_GetTokenInfo)"))
                .map_err(fail)?;
            let label = info.label().trim_end_matches([' ', '\0']).to_string();
            if label == token_label {
                matching.push(slot);
            }
            present.push(label);
        }
        let slot = match matching.as_slice() {
            [slot] => *slot,
            [] => {
                return Err(BackendError::Failed(format!(
                    "no PKCS#11 token labelled {token_label:?} in module {} (tokens present: \
                     {present:?}); check the token label and that the token is plugged in",
                    module.path.display()
                )));
            }
            _ => {
                return Err(BackendError::Failed(format!(
                    "{} PKCS#11 tokens are labelled {token_label:?}; castellan needs the label \
                     to name one token: relabel the others",
                    matching.len()
                )));
            }
        };
        let mechanisms = module
            .ctx
            .get_mechanism_list(slot)
            .map_err(ck("listing mechanisms (C_GetMechanismList)"))
            .map_err(fail)?;
        let login = module
            .ctx
            .open_rw_session(slot)
            .map_err(ck("opening a session (C_OpenSession)"))
            .map_err(fail)?;
        login_user(&login, pin).map_err(fail)?;
        Ok(Pkcs11Backend {
            pool: Mutex::new(Vec::new()),
            handles: RwLock::new(HashMap::new()),
            login: Mutex::new(login),
            pin: pin.clone(),
            slot,
            token_label: token_label.to_string(),
            mechanisms,
            module,
        })
    }

    fn take_session(&self) -> Result<Session, Fault> {
        let idle = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(s) => Ok(s),
            None => self
                .module
                .ctx
                .open_ro_session(self.slot)
                .map_err(ck("opening a session (C_OpenSession)")),
        }
    }

    fn put_back(&self, session: Session) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < MAX_IDLE_SESSIONS {
            pool.push(session);
            return;
        }
        drop(pool);
        drop(session);
    }

    /// Runs `f` on a pooled session; a session that failed as stale is
    /// closed instead of going back to the pool.
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, Fault>) -> Result<T, Fault> {
        let session = self.take_session()?;
        let result = f(&session);
        match &result {
            Err(fault) if fault.stale() => drop(session),
            _ => self.put_back(session),
        }
        result
    }

    /// Logs in again after a stale-session error, replacing the login
    /// session if the token dropped it, and forgets every pooled session
    /// and cached handle.
    fn relogin(&self) -> Result<(), Fault> {
        let mut login = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        match login_user(&login, &self.pin) {
            Ok(()) => {}
            Err(Fault::Ck(
                _,
                CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed, _),
            )) => {
                let fresh = self
                    .module
                    .ctx
                    .open_rw_session(self.slot)
                    .map_err(ck("opening a session (C_OpenSession)"))?;
                login_user(&fresh, &self.pin)?;
                *login = fresh;
            }
            Err(other) => return Err(other),
        }
        drop(login);
        let stale: Vec<Session> =
            std::mem::take(&mut *self.pool.lock().unwrap_or_else(PoisonError::into_inner));
        drop(stale);
        self.handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// Runs `op`, and once more after logging in again if it failed stale.
    fn retrying<T>(&self, op: impl Fn() -> Result<T, Fault>) -> Result<T, BackendError> {
        let fail = |f: Fault| f.into_backend(&self.token_label);
        match op() {
            Err(fault) if fault.stale() => {
                tracing::warn!(
                    token = %self.token_label,
                    error = ?fault,
                    "PKCS#11 session or handle went stale; logging in again"
                );
                self.relogin().map_err(fail)?;
                op().map_err(fail)
            }
            other => other.map_err(fail),
        }
    }

    /// The cached private key of `label`, searched for on first use.
    fn key(&self, label: &str) -> Result<KeyRef, Fault> {
        if let Some(k) = self
            .handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(label)
        {
            return Ok(*k);
        }
        if !label_ok(label) {
            return Err(BackendError::NotFound(label.to_string()).into());
        }
        let key = self.with_session(|s| {
            let private = find_one(s, ObjectClass::PRIVATE_KEY, label)?
                .ok_or_else(|| BackendError::NotFound(label.to_string()))?;
            Ok(KeyRef {
                alg: private_key_alg(s, private)?,
                private,
            })
        })?;
        self.handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(label.to_string(), key);
        Ok(key)
    }

    fn require(&self, mechanisms: &[(MechanismType, &str)], alg: Algorithm) -> Result<(), Fault> {
        for (m, name) in mechanisms {
            if !self.mechanisms.contains(m) {
                return Err(BackendError::Unsupported(format!(
                    "token {:?} lacks {name}, needed for {} keys",
                    self.token_label,
                    alg.as_str()
                ))
                .into());
            }
        }
        Ok(())
    }

    fn generate_once(&self, label: &str, alg: Algorithm) -> Result<Vec<u8>, Fault> {
        let id = label.as_bytes().to_vec();
        let common_private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(id.clone()),
            Attribute::Id(id.clone()),
        ];
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Label(id.clone()),
            Attribute::Id(id),
        ];
        let mechanism = match ec_curve_oid_der(alg) {
            Some(curve) => {
                self.require(
                    &[
                        (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
                        (MechanismType::ECDSA, "CKM_ECDSA"),
                    ],
                    alg,
                )?;
                public.push(Attribute::EcParams(curve.to_vec()));
                Mechanism::EccKeyPairGen
            }
            None => {
                self.require(
                    &[
                        (
                            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                            "CKM_RSA_PKCS_KEY_PAIR_GEN",
                        ),
                        (MechanismType::SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS"),
                    ],
                    alg,
                )?;
                let info = self
                    .module
                    .ctx
                    .get_mechanism_info(self.slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN)
                    .map_err(ck("reading mechanism information"))?;
                if !(info.min_key_size()..=info.max_key_size()).contains(&RSA_BITS) {
                    return Err(BackendError::Unsupported(format!(
                        "token {:?} generates RSA keys of {} to {} bits, not {RSA_BITS}",
                        self.token_label,
                        info.min_key_size(),
                        info.max_key_size()
                    ))
                    .into());
                }
                public.push(Attribute::ModulusBits((RSA_BITS as u64).into()));
                public.push(Attribute::PublicExponent(RSA_PUBLIC_EXPONENT.to_vec()));
                Mechanism::RsaPkcsKeyPairGen
            }
        };

        // One generation at a time, on the R/W login session: the label
        // check and the generation must not interleave within castellan.
        let session = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        // A public key without its private key (a half-finished import)
        // counts as taken too: it would make the label ambiguous.
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            if find_one(&session, class, label)
                .map_err(|f| match f {
                    Fault::Backend(BackendError::Failed(_)) => {
                        Fault::Backend(BackendError::Exists(label.to_string()))
                    }
                    other => other,
                })?
                .is_some()
            {
                return Err(BackendError::Exists(label.to_string()).into());
            }
        }
        let (public_key, private_key) = session
            .generate_key_pair(&mechanism, &public, &common_private)
            .map_err(ck("key generation (C_GenerateKeyPair)"))?;
        let (got, spki) = public_spki(&session, public_key)?;
        drop(session);
        if got != alg {
            return Err(BackendError::Failed(format!(
                "the token generated a {} key when asked for {}",
                got.as_str(),
                alg.as_str()
            ))
            .into());
        }
        self.handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                label.to_string(),
                KeyRef {
                    alg,
                    private: private_key,
                },
            );
        Ok(spki)
    }

    fn public_key_once(&self, label: &str) -> Result<(Algorithm, Vec<u8>), Fault> {
        // Only a key that can sign has a public key here, as in `sign`.
        let key = self.key(label)?;
        self.with_session(|s| {
            let public = find_one(s, ObjectClass::PUBLIC_KEY, label)?.ok_or_else(|| {
                BackendError::Failed(format!(
                    "the token holds a private key labelled {label:?} but no public key object \
                     with that label; import the public key under the same label"
                ))
            })?;
            let (alg, spki) = public_spki(s, public)?;
            if alg != key.alg {
                return Err(BackendError::Failed(format!(
                    "the public key labelled {label:?} is {} but the private key is {}",
                    alg.as_str(),
                    key.alg.as_str()
                ))
                .into());
            }
            Ok((alg, spki))
        })
    }

    fn sign_once(&self, label: &str, message: &[u8]) -> Result<Vec<u8>, Fault> {
        let key = self.key(label)?;
        let sign = |mechanism: &Mechanism, data: &[u8]| {
            self.with_session(|s| {
                s.sign(mechanism, key.private, data)
                    .map_err(ck("signing (C_Sign)"))
            })
        };
        let (digest_alg, raw_len) = match key.alg {
            Algorithm::EcdsaP256 => (&ring::digest::SHA256, 64),
            Algorithm::EcdsaP384 => (&ring::digest::SHA384, 96),
            Algorithm::Rsa3072 => return sign(&Mechanism::Sha256RsaPkcs, message),
        };
        // CKM_ECDSA signs a digest; hashing here is what makes P-384 use SHA-384.
        let digest = ring::digest::digest(digest_alg, message);
        let raw = sign(&Mechanism::Ecdsa, digest.as_ref())?;
        if raw.len() != raw_len {
            return Err(BackendError::Failed(format!(
                "the token returned a {}-byte {} signature, expected {raw_len}",
                raw.len(),
                key.alg.as_str()
            ))
            .into());
        }
        Ok(ecdsa_raw_to_der(&raw)?)
    }
}

impl Backend for Pkcs11Backend {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn generate(&self, label: &str, alg: Algorithm) -> Result<Vec<u8>, BackendError> {
        if !label_ok(label) {
            return Err(BackendError::Unsupported(format!(
                "key labels must be 1 to {MAX_LABEL_LEN} bytes long"
            )));
        }
        self.retrying(|| self.generate_once(label, alg))
    }

    fn public_key(&self, label: &str) -> Result<(Algorithm, Vec<u8>), BackendError> {
        self.retrying(|| self.public_key_once(label))
    }

    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.retrying(|| self.sign_once(label, message))
    }
}

/// SO PIN of tokens made by [`softhsm_test_token`].
pub const SOFTHSM_TEST_SO_PIN: &str = "5678";

/// Test support: writes `dir/softhsm2.conf` (tokens under `dir/tokens`) and
/// initialises a SoftHSM2 token `label` with user PIN `pin` in it. Returns
/// the configuration path; the caller points `SOFTHSM2_CONF` at it in the
/// process that loads the module.
#[doc(hidden)]
pub fn softhsm_test_token(dir: &Path, label: &str, pin: &str) -> std::io::Result<PathBuf> {
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SOFTHSM_TEST_SO_PIN,
            "--pin",
            pin,
        ])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "softhsm2-util --init-token failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance;

    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    const TOKEN: &str = "castellan-test";
    const PIN: &str = "1234";
    /// Set in the child process; names the directory of its token.
    const CHILD_ENV: &str = "CASTELLAN_TEST_SOFTHSM_DIR";

    /// Runs `body` against a fresh SoftHSM2 token. SoftHSM2 reads
    /// `SOFTHSM2_CONF` when the module initialises, and changing the
    /// environment of a multi-threaded test process is unsound, so the test
    /// runs itself again in a child process whose environment names its own
    /// token.
    fn with_softhsm(test: &str, body: impl FnOnce()) {
        if std::env::var_os(CHILD_ENV).is_some() {
            body();
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let conf = softhsm_test_token(tmp.path(), TOKEN, PIN).expect("softhsm token");
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let name = format!("{module}::{test}");
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env("SOFTHSM2_CONF", &conf)
            .env(CHILD_ENV, tmp.path())
            .output()
            .expect("run the test in a child process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} failed in its child process:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    macro_rules! softhsm_test {
        ($(#[$doc:meta])* fn $name:ident() $body:block) => {
            $(#[$doc])*
            #[test]
            fn $name() {
                with_softhsm(stringify!($name), || $body)
            }
        };
    }

    fn open() -> Pkcs11Backend {
        match Pkcs11Backend::open(Path::new(MODULE), TOKEN, &SecretString::from(PIN)) {
            Ok(b) => b,
            Err(e) => panic!("open the SoftHSM2 token: {e}"),
        }
    }

    #[test]
    fn pkcs11_backend_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pkcs11Backend>();
    }

    #[test]
    fn a_missing_module_is_refused_naming_the_path_to_check() {
        let err = Pkcs11Backend::open(
            Path::new("/nonexistent/libpkcs11.so"),
            TOKEN,
            &SecretString::from(PIN),
        )
        .map(|_| ())
        .expect_err("opened a missing module");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/libpkcs11.so") && msg.contains("module path"),
            "{msg}"
        );
    }

    softhsm_test! {
        fn softhsm_backend_passes_the_conformance_suite() {
            conformance::run(&open());
        }
    }

    softhsm_test! {
        fn softhsm_rsa_3072_keys_sign_pkcs1_sha256_signatures_that_verify() {
            let backend = open();
            let spki = backend.generate("rsa-root", Algorithm::Rsa3072).expect("generate");
            assert_eq!(backend.public_key("rsa-root").expect("pk"), (Algorithm::Rsa3072, spki.clone()));
            let msg = b"tbsCertificate stand-in";
            let sig = backend.sign("rsa-root", msg).expect("sign");
            assert_eq!(sig.len(), RSA_BITS / 8);
            conformance::verify(&spki, Algorithm::Rsa3072, msg, &sig).expect("verify");
            assert!(conformance::verify(&spki, Algorithm::Rsa3072, b"other", &sig).is_err());
            assert!(matches!(
                backend.generate("rsa-root", Algorithm::Rsa3072),
                Err(BackendError::Exists(_))
            ));
        }
    }

    softhsm_test! {
        fn softhsm_private_keys_are_sensitive_and_never_extractable() {
            let backend = open();
            for (label, alg) in [("ec", Algorithm::EcdsaP256), ("rsa", Algorithm::Rsa3072)] {
                backend.generate(label, alg).expect("generate");
                let key = backend.key(label).expect("key");
                let attrs = backend
                    .with_session(|s| {
                        s.get_attributes(
                            key.private,
                            &[
                                AttributeType::Sensitive,
                                AttributeType::Extractable,
                                AttributeType::AlwaysSensitive,
                                AttributeType::NeverExtractable,
                                AttributeType::Private,
                                AttributeType::Token,
                                AttributeType::Sign,
                                AttributeType::Decrypt,
                                AttributeType::Unwrap,
                                AttributeType::Derive,
                            ],
                        )
                        .map_err(ck("reading attributes"))
                    })
                    .expect("attributes");
                assert_eq!(attrs.len(), 10, "{attrs:?}");
                for a in attrs {
                    match a {
                        Attribute::Sensitive(v)
                        | Attribute::AlwaysSensitive(v)
                        | Attribute::NeverExtractable(v)
                        | Attribute::Private(v)
                        | Attribute::Token(v)
                        | Attribute::Sign(v) => assert!(v, "{label}: {a:?}"),
                        Attribute::Extractable(v)
                        | Attribute::Decrypt(v)
                        | Attribute::Unwrap(v)
                        | Attribute::Derive(v) => assert!(!v, "{label}: {a:?}"),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
    }

    softhsm_test! {
        fn softhsm_keys_survive_reopening_the_token() {
            let backend = open();
            let spki = backend.generate("issuing", Algorithm::EcdsaP384).expect("generate");
            drop(backend);
            let backend = open();
            assert_eq!(backend.public_key("issuing").expect("pk"), (Algorithm::EcdsaP384, spki.clone()));
            let sig = backend.sign("issuing", b"after restart").expect("sign");
            conformance::verify(&spki, Algorithm::EcdsaP384, b"after restart", &sig).expect("verify");
            assert!(matches!(
                backend.generate("issuing", Algorithm::EcdsaP256),
                Err(BackendError::Exists(_))
            ));
        }
    }

    softhsm_test! {
        fn softhsm_wrong_pin_is_refused_without_revealing_it() {
            let err = Pkcs11Backend::open(Path::new(MODULE), TOKEN, &SecretString::from("918273"))
                .map(|_| ())
                .expect_err("logged in with a wrong PIN");
            let msg = err.to_string();
            assert!(msg.contains("refused the PIN"), "{msg}");
            assert!(msg.contains(TOKEN), "{msg}");
            assert!(!msg.contains("918273") && !format!("{err:?}").contains("918273"), "{msg}");
            // The failed attempt released the module: the right PIN works.
            let backend = open();
            assert!(!format!("{backend:?}").contains(PIN));
        }
    }

    softhsm_test! {
        fn softhsm_unknown_token_label_lists_the_tokens_present() {
            let err = Pkcs11Backend::open(Path::new(MODULE), "no-such-token", &SecretString::from(PIN))
                .map(|_| ())
                .expect_err("opened a missing token");
            let msg = err.to_string();
            assert!(msg.contains("no-such-token") && msg.contains(TOKEN), "{msg}");
        }
    }

    softhsm_test! {
        fn softhsm_backends_on_one_module_share_its_initialisation() {
            let first = open();
            let second = open();
            let spki = first.generate("shared", Algorithm::EcdsaP256).expect("generate");
            drop(first);
            let sig = second.sign("shared", b"m").expect("sign after the other backend closed");
            conformance::verify(&spki, Algorithm::EcdsaP256, b"m", &sig).expect("verify");
        }
    }

    softhsm_test! {
        fn softhsm_signing_recovers_after_the_token_logs_out() {
            let backend = open();
            let spki = backend.generate("k", Algorithm::EcdsaP256).expect("generate");
            backend.sign("k", b"before").expect("sign");
            backend
                .login
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .logout()
                .expect("logout");
            // Without a new login the cached handle and pooled sessions fail stale...
            match backend.sign_once("k", b"after") {
                Err(fault) => assert!(fault.stale(), "{fault:?}"),
                Ok(_) => panic!("signed while logged out"),
            }
            // ...and `sign` logs in again and retries.
            let sig = backend.sign("k", b"after").expect("sign after logout");
            conformance::verify(&spki, Algorithm::EcdsaP256, b"after", &sig).expect("verify");
        }
    }
}
