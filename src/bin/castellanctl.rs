//! castellanctl: the admin CLI.
//!
//! Most commands talk to castellan's admin socket (`--socket`, default
//! `/run/castellan/admin.sock` or `$CASTELLAN_ADMIN_SOCKET`); the peer's
//! uid decides what it may do. `castellanctl signer …` drives a signer
//! directly: the path of the offline root host, where ceremonies travel as
//! files between custodians.
//!
//! Exit codes (one mapping, [`ErrorKind::exit_code`]): 0 ok, 1 refused or
//! failed (the message says why), 2 usage or bad request, 3 not found,
//! 69 castellan or the signer unavailable, 70 internal error, 77 forbidden.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use castellan::admin_client::{self, AdminClient, encode_component, query_string};
use castellan::api::{
    ApiError, ApproveCeremony, CaView, CeremonyView, CertPage, CertView, CheckpointView, CrlView,
    ErrorBody, ErrorKind, EventPage, EventView, IssueRequest, IssuedView, MAX_PAGE, OpenCeremony,
    PublishCrl, RevokeRequest, StatusView, VerifyView,
};
use castellan::custodian::{CustodianKey, read_passphrase};
use castellan::signer_client::{ClientError, SignerClient};
use castellan::{csr, pem};
use castellan_proto::{
    Algorithm, Approval, CaParams, CeremonyContext, CeremonyId, CeremonyOp, CeremonyOutcome,
    CertificateTemplate, Custodian, CustodianSet, DistinguishedName, NameAttribute, Purpose,
    QuorumProof, Request, Response, RevocationReason, Urls, Validity, statement_digest,
};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

// Output to a closed pipe (`castellanctl audit log | head`) ends castellanctl
// quietly with status 141, as SIGPIPE ends other tools, instead of the
// panic of std's `println!`; any other failure to write the output is
// reported (status 74). These shadow std's macros in this file.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            stdout_failed(&e)
        }
    }};
}

macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            stdout_failed(&e)
        }
    }};
}

fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("castellanctl: cannot write the output: {e}");
    std::process::exit(74);
}

const DEFAULT_SIGNER_SOCKET: &str = "/run/castellan-signer/signer.sock";
const ADMIN_SOCKET_ENV: &str = "CASTELLAN_ADMIN_SOCKET";

#[derive(Parser)]
#[command(
    name = "castellanctl",
    version,
    about = "Administer castellan",
    after_help = "Exit status: 0 ok; 1 refused or failed (the message says why and what to do); \
                  2 usage or bad request; 3 not found; 69 castellan or the signer unavailable; \
                  70 internal error; 74 the output could not be written; 77 forbidden (your \
                  uid's role does not allow it); 141 the output was closed early (| head). \
                  With --json, results and error bodies ({\"error\": {\"kind\", \"message\"}}) \
                  are printed on stdout."
)]
struct Cli {
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Socket to talk to: castellan's admin socket (default
    /// /run/castellan/admin.sock, or $CASTELLAN_ADMIN_SOCKET); for `signer …`
    /// the signer's socket (default /run/castellan-signer/signer.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// castellan's state: event log, signer, CAs, certificates, and who you are.
    Status,
    /// m-of-n custodian ceremonies for CA keys: open → approve → execute.
    Ceremony {
        #[command(subcommand)]
        command: CeremonyCmd,
    },
    /// Certificate authorities castellan holds.
    Ca {
        #[command(subcommand)]
        command: CaCmd,
    },
    /// Issue a certificate, from a CSR or for a key generated here.
    Issue(IssueArgs),
    /// Inspect certificates.
    Cert {
        #[command(subcommand)]
        command: CertCmd,
    },
    /// Revoke a certificate.
    Revoke {
        /// Serial number in hex, as `cert list` or `openssl x509 -noout
        /// -serial` shows it (colons and a serial= prefix are fine).
        serial: String,
        /// RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, …
        #[arg(long)]
        reason: String,
        /// Since when the key is suspect (RFC 3339, e.g. 2025-01-31T00:00:00Z).
        #[arg(long)]
        invalidity_date: Option<String>,
    },
    /// CRLs: see the current one, publish one now, emergency mode.
    Crl {
        #[command(subcommand)]
        command: CrlCmd,
    },
    /// The event log: verify the hash chain, read it, checkpoint it.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Custodian approval keys.
    Custodian {
        #[command(subcommand)]
        command: CustodianCmd,
    },
    /// Talk to a castellan-signer directly (offline root host, bootstrap).
    Signer {
        #[command(subcommand)]
        command: SignerCmd,
    },
}

#[derive(Subcommand)]
enum CeremonyCmd {
    /// Open a ceremony with its exact parameters.
    Open {
        #[arg(long, value_parser = ["root", "intermediate", "rotate", "cross-sign", "custodians"])]
        purpose: String,
        /// The CA to create (root, intermediate), rotate or cross-sign.
        #[arg(long)]
        ca_id: Option<String>,
        /// Issuing CA of an intermediate, or the issuer of a cross-signature.
        #[arg(long)]
        parent: Option<String>,
        /// e.g. "CN=Example Root CA,O=Example"
        #[arg(long)]
        subject: Option<String>,
        /// Validity in days.
        #[arg(long)]
        days: Option<u32>,
        /// ecdsa-p256, ecdsa-p384 or rsa-3072.
        #[arg(long)]
        algorithm: Option<String>,
        #[arg(long)]
        path_len: Option<u8>,
        /// New custodian set (purpose custodians): NAME=PUBLIC_KEY_FILE, repeat.
        #[arg(long = "custodian", value_name = "NAME=PUBFILE")]
        custodians: Vec<String>,
        /// Approvals the new custodian set needs (purpose custodians).
        #[arg(long)]
        threshold: Option<u8>,
        /// Purpose rotate: the id of the successor CA.
        #[arg(long)]
        new_ca_id: Option<String>,
        /// Purpose cross-sign: the CA certificate to certify (PEM file).
        #[arg(long, value_name = "FILE")]
        certificate: Option<PathBuf>,
    },
    /// Approve: check what the ceremony does, sign its statement with your key.
    Approve {
        id: String,
        /// Your custodian key file (from `castellanctl custodian keygen`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// What a ceremony does, k of m approvals, who approved when.
    Show { id: String },
    /// All ceremonies.
    List,
    /// Carry out a ceremony that has its quorum.
    Execute {
        id: String,
        /// Where to write the resulting CA certificate (PEM).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// All CAs.
    List,
    /// One CA.
    Show {
        id: String,
        /// Write its certificate (PEM) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct IssueArgs {
    /// A PKCS#10 CSR (PEM or DER).
    #[arg(long, required_unless_present = "generate_key", conflicts_with_all = ["generate_key", "subject", "sans", "key_out"])]
    csr: Option<PathBuf>,
    /// Generate the key and the CSR here; the private key never leaves this host.
    #[arg(long, requires_all = ["subject", "key_out"])]
    generate_key: bool,
    /// With --generate-key: e.g. "CN=web.example.internal,O=Example".
    #[arg(long)]
    subject: Option<String>,
    /// With --generate-key: DNS:name, IP:address, EMAIL:address or URI:uri; repeat.
    #[arg(long = "san", value_name = "TYPE:VALUE")]
    sans: Vec<String>,
    /// With --generate-key: the key's algorithm.
    #[arg(long, default_value = "ecdsa-p256", value_parser = ["ecdsa-p256", "ecdsa-p384"])]
    key_algorithm: String,
    /// With --generate-key: where to write the private key (PEM, mode 0600).
    #[arg(long)]
    key_out: Option<PathBuf>,
    /// Issuance profile, e.g. server or client.
    #[arg(long)]
    profile: String,
    /// Validity in days (default: the profile's).
    #[arg(long, value_name = "DAYS")]
    ttl: Option<u32>,
    /// Issuing CA (default: castellan's default issuer).
    #[arg(long)]
    issuer: Option<String>,
    /// Who or what the certificate is for (default: the first SAN or the CN).
    #[arg(long)]
    identity: Option<String>,
    /// Where to write the certificate (PEM).
    #[arg(long)]
    out: PathBuf,
    /// Where to write the issuer chain (PEM).
    #[arg(long)]
    chain_out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CertCmd {
    /// One certificate by serial (hex).
    Show {
        /// Serial number in hex, as `cert list` or `openssl x509 -noout
        /// -serial` shows it (colons and a serial= prefix are fine).
        serial: String,
        /// Write the certificate (PEM) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Certificates, in serial order (by issuance within --ca). castellan
    /// answers in pages; all pages are fetched.
    List {
        /// Only those issued by this CA.
        #[arg(long)]
        ca: Option<String>,
        #[arg(long, value_parser = ["issued", "revoked", "possibly-issued"])]
        status: Option<String>,
        #[arg(long)]
        identity: Option<String>,
        /// Show at most this many (default: all, fetched page by page).
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
enum CrlCmd {
    /// The CA's current CRL: number, validity, entries, URL.
    Show {
        /// The CA's id, as `castellanctl ca list` shows it.
        #[arg(long)]
        issuer: String,
    },
    /// Publish a new CRL of the CA now.
    Publish {
        /// The CA's id, as `castellanctl ca list` shows it.
        #[arg(long)]
        issuer: String,
    },
    /// Publish a CRL with a short nextUpdate at once, and keep that short
    /// validity for every later CRL until `--end` (relying parties then
    /// fetch it again soon).
    Emergency {
        /// The CA's id, as `castellanctl ca list` shows it.
        #[arg(long)]
        issuer: String,
        /// e.g. 1h, 30m, 2h30m, 3600s (60 s to 7 days).
        #[arg(long, required_unless_present = "end", conflicts_with = "end")]
        next_update: Option<String>,
        /// Leave emergency mode: publish with the configured validity.
        #[arg(long)]
        end: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Re-walk the hash chain and check the signed checkpoints.
    ///
    /// castellan asks the signer for its audit key and requires every audit
    /// key recorded in the log to be that key (a key recorded in the log
    /// proves nothing by itself).
    ///
    /// Exit status: 0 the chain and every checkpoint verified against the
    /// signer's audit key; 1 damage found (the report names the first bad
    /// event, bad checkpoints, or recorded audit keys that are not the
    /// signer's); 69 no damage found, but the signer could not be asked for
    /// its audit key, so the checkpoint keys are NOT confirmed (run it again
    /// once castellan-signer is reachable).
    Verify,
    /// Read events.
    Log {
        /// e.g. "alice (uid 1000)" or a part of it.
        #[arg(long)]
        actor: Option<String>,
        /// e.g. certificate-revoked, ceremony-approved.
        #[arg(long)]
        kind: Option<String>,
        /// RFC 3339 or unix milliseconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// A serial, CA id, ceremony id or identity.
        #[arg(long)]
        subject: Option<String>,
        /// Show at most this many, oldest first (default: all, fetched
        /// page by page).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Have the signer's audit key sign the log's head now.
    Checkpoint,
}

#[derive(Subcommand)]
enum CustodianCmd {
    /// Make a new Ed25519 custodian key (FILE, sealed with a passphrase) and FILE.pub.
    Keygen {
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        passphrase_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum SignerCmd {
    /// The signer's status.
    Status,
    /// Ceremonies as files: new → approve (m custodians) → execute.
    Ceremony {
        #[command(subcommand)]
        command: SignerCeremonyCmd,
    },
    /// Issue an end-entity certificate from a CSR.
    Issue {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        profile: String,
        #[arg(long)]
        csr: PathBuf,
        /// Validity in days (the signer's profile caps it).
        #[arg(long, default_value_t = 90)]
        days: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a CA's certificate (PEM).
    CaCert {
        #[arg(long)]
        ca: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// The signer's audit public key (PEM SubjectPublicKeyInfo), which
    /// signs the event log's checkpoints: keep a copy apart from the log,
    /// for `castellan verify --database FILE --audit-key FILE`.
    AuditKey {
        /// Write it here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SignerCeremonyCmd {
    /// Prepare a ceremony file with its exact parameters.
    New {
        /// root | intermediate | custodians
        #[arg(long)]
        purpose: String,
        #[arg(long, required_unless_present = "custodian")]
        ca_id: Option<String>,
        /// Issuing CA of an intermediate.
        #[arg(long)]
        parent: Option<String>,
        /// e.g. "CN=Example Root CA,O=Example"
        #[arg(long, required_unless_present = "custodian")]
        subject: Option<String>,
        #[arg(long, default_value_t = 3650)]
        days: u32,
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: String,
        #[arg(long)]
        path_len: Option<u8>,
        /// New custodian set (purpose custodians): NAME=PUBLIC_KEY_FILE, repeat.
        #[arg(long)]
        custodian: Vec<String>,
        #[arg(long)]
        threshold: Option<u8>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Show what a ceremony would do and who approved it.
    Show { file: PathBuf },
    /// Approve (sign the ceremony statement) with a custodian key.
    Approve {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Send the ceremony and its approvals to the signer.
    Execute {
        file: PathBuf,
        /// Where to write the resulting certificate (PEM).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Serialize, Deserialize)]
struct CeremonyFile {
    format: String,
    ceremony_id: String,
    /// The signer this ceremony is for (SHA-256 of its audit key, hex) and
    /// its custodian set (SHA-256, hex), learnt from the signer by `new`:
    /// approvals sign both.
    signer_id: String,
    custodians_sha256: String,
    op: CeremonyOp,
    approvals: Vec<FileApproval>,
}

const CEREMONY_FILE_FORMAT: &str = "castellan-ceremony-v2";

/// The context a ceremony's approvals are made for, from its hex fields.
fn ceremony_context(signer_id: &str, custodians_sha256: &str) -> Option<CeremonyContext> {
    let signer_id: [u8; 32] = hex::decode(signer_id).ok()?.try_into().ok()?;
    let custodians_sha256: [u8; 32] = hex::decode(custodians_sha256).ok()?.try_into().ok()?;
    Some(CeremonyContext {
        signer_id,
        custodians_sha256,
    })
}

#[derive(Serialize, Deserialize)]
struct FileApproval {
    name: String,
    custodian: String,
    signature: String,
}

/// Why castellanctl stops: an error with its kind (and so its exit code),
/// or a result already reported (e.g. `audit verify` found a broken chain).
enum Failure {
    Api(ApiError),
    Reported(ErrorKind),
}

fn usage(m: String) -> Failure {
    Failure::Api(ApiError::new(ErrorKind::BadRequest, m))
}

fn refused(m: String) -> Failure {
    Failure::Api(ApiError::new(ErrorKind::Refused, m))
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        refused(m)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unavailable(_) => {
                Failure::Api(ApiError::new(ErrorKind::Unavailable, e.to_string()))
            }
            _ => refused(e.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported(kind)) => ExitCode::from(kind.exit_code()),
        Err(Failure::Api(e)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&ErrorBody { error: e.clone() })
                        .unwrap_or_else(|_| "{}".into())
                );
            } else {
                eprintln!("castellanctl: {}", e.message);
            }
            ExitCode::from(e.kind.exit_code())
        }
    }
}

/// A command line clap refused: with `--json`, the error body on stdout
/// like every other error (exit 2, bad request); otherwise clap's own
/// message, with its suggestions, on stderr.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    if !json || matches!(e.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
        e.exit();
    }
    let text = e.render().to_string();
    let text = text.trim_end();
    let body = ErrorBody {
        error: ApiError::new(
            ErrorKind::BadRequest,
            text.strip_prefix("error: ").unwrap_or(text),
        ),
    };
    println!(
        "{}",
        serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
    );
    ExitCode::from(ErrorKind::BadRequest.exit_code())
}

fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    let admin = || {
        let socket = cli
            .socket
            .clone()
            .or_else(|| std::env::var_os(ADMIN_SOCKET_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(admin_client::DEFAULT_SOCKET));
        Ctx {
            client: AdminClient::new(socket),
            json,
        }
    };
    match cli.command {
        Command::Status => status_cmd(&admin()),
        Command::Ceremony { command } => admin_ceremony_cmd(&admin(), command),
        Command::Ca { command } => ca_cmd(&admin(), command),
        Command::Issue(args) => issue_cmd(&admin(), args),
        Command::Cert { command } => cert_cmd(&admin(), command),
        Command::Revoke {
            serial,
            reason,
            invalidity_date,
        } => revoke_cmd(&admin(), &serial, &reason, invalidity_date),
        Command::Crl { command } => crl_cmd(&admin(), command),
        Command::Audit { command } => audit_cmd(&admin(), command),
        Command::Custodian {
            command:
                CustodianCmd::Keygen {
                    name,
                    out,
                    passphrase_file,
                },
        } => {
            let pass = passphrase_from(&passphrase_file)?;
            let key = CustodianKey::generate(&name, &out, &pass)?;
            let pk = hex::encode(key.public_key());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "public_key": pk, "key_file": out, "public_key_file": castellan::custodian::pub_path(&out)})
                );
            } else {
                println!("custodian {name}: ed25519:{pk}");
                println!(
                    "  key file:        {} (keep it offline; sealed with your passphrase)",
                    out.display()
                );
                println!(
                    "  public key file: {}",
                    castellan::custodian::pub_path(&out).display()
                );
            }
            Ok(())
        }
        Command::Signer { command } => {
            // The admin socket's environment variable does not apply here:
            // only an explicit --socket names the signer's socket.
            let socket = cli
                .socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SIGNER_SOCKET));
            signer_cmd(&socket, command, json)
        }
    }
}
/// A custodian's passphrase from its file, with a warning when other users
/// can read the file.
fn passphrase_from(path: &Path) -> Result<secrecy::SecretString, Failure> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.is_file()
        && m.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "castellanctl: warning: passphrase file {} can be read by other users (mode {:04o}); \
             `chmod 600 {}`",
            path.display(),
            m.permissions().mode() & 0o7777,
            path.display()
        );
    }
    Ok(read_passphrase(path)?)
}

fn parse_subject(s: &str) -> Result<DistinguishedName, Failure> {
    castellan::names::parse_subject(s).map_err(usage)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn read_ceremony(path: &Path) -> Result<(CeremonyId, CeremonyFile), Failure> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read ceremony file {}: {e}", path.display()))?;
    let file: CeremonyFile = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a castellan ceremony file: {e}", path.display()))?;
    if file.format != CEREMONY_FILE_FORMAT {
        return Err(refused(format!(
            "{} has format {:?}, not {CEREMONY_FILE_FORMAT:?}: make the ceremony file again with \
             `castellanctl signer ceremony new` (approvals now name the signer they are for)",
            path.display(),
            file.format
        )));
    }
    let id: CeremonyId = hex::decode(&file.ceremony_id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: malformed ceremony id", path.display()))?;
    Ok((id, file))
}

fn write_ceremony(path: &Path, file: &CeremonyFile) -> Result<(), Failure> {
    let text = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
    castellan::files::replace(path, &text).map_err(refused)
}

/// Writes a certificate, chain or public key: whole or not at all, and
/// never over a private key.
fn write_out(path: &Path, content: &str) -> Result<(), Failure> {
    castellan::files::replace(path, content.as_bytes()).map_err(refused)
}

fn signer_cmd(socket: &Path, command: SignerCmd, json: bool) -> Result<(), Failure> {
    match command {
        SignerCmd::Status => {
            let mut c = SignerClient::connect(socket)?;
            let Response::Status(s) = c.call(Request::Status)? else {
                return Err(refused("unexpected answer".into()));
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"version": s.version, "backend": s.backend, "seccomp": s.seccomp,
                        "journal_records": s.journal_records, "journal_head": hex::encode(s.journal_head),
                        "cas": s.ca_count, "custodians": {"threshold": s.custodian_threshold, "count": s.custodian_count}})
                );
            } else {
                println!(
                    "castellan-signer {} ({} backend, seccomp {})",
                    s.version,
                    s.backend,
                    if s.seccomp { "on" } else { "OFF" }
                );
                println!(
                    "  CAs: {}   custodians: {} of {}",
                    s.ca_count, s.custodian_threshold, s.custodian_count
                );
                println!(
                    "  journal: {} records, head {}",
                    s.journal_records,
                    hex::encode(s.journal_head)
                );
            }
            Ok(())
        }
        SignerCmd::CaCert { ca, out } => {
            let mut c = SignerClient::connect(socket)?;
            let Response::PublicKeys(k) = c.call(Request::PublicKeys)? else {
                return Err(refused("unexpected answer".into()));
            };
            let info = k.cas.iter().find(|i| i.ca_id == ca).ok_or_else(|| {
                let known: Vec<&str> = k.cas.iter().map(|i| i.ca_id.as_str()).collect();
                Failure::Api(ApiError::new(
                    ErrorKind::NotFound,
                    format!(
                        "the signer holds no CA {ca:?}; it holds: {}",
                        if known.is_empty() {
                            "none yet".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ))
            })?;
            write_out(&out, &pem::encode("CERTIFICATE", &info.certificate_der))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ca_id": info.ca_id, "certificate": out})
                );
            } else {
                println!("CA {} certificate written to {}", info.ca_id, out.display());
            }
            Ok(())
        }
        SignerCmd::Issue {
            issuer,
            profile,
            csr: csr_path,
            days,
            out,
        } => {
            let raw = std::fs::read(&csr_path)
                .map_err(|e| format!("cannot read {}: {e}", csr_path.display()))?;
            let parsed = csr::parse(&raw).map_err(|e| format!("{}: {e}", csr_path.display()))?;
            castellan::files::check_replaceable(&out).map_err(refused)?;
            // Backdated a minute for relying parties with slightly slow clocks.
            let nb = now() - 60;
            let template = CertificateTemplate {
                issuer,
                profile,
                subject: parsed.subject,
                sans: parsed.sans,
                spki_der: parsed.spki_der,
                validity: Validity {
                    not_before: nb,
                    // notAfter is itself a valid second (RFC 5280 4.1.2.5).
                    not_after: nb + i64::from(days) * 86_400 - 1,
                },
                ca: false,
                urls: Urls::default(),
            };
            let mut c = SignerClient::connect(socket)?;
            let Response::Certificate(cert) = c.call(Request::IssueCertificate(template))? else {
                return Err(refused("unexpected answer".into()));
            };
            write_out(&out, &pem::encode("CERTIFICATE", &cert.der))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"serial": hex::encode(&cert.serial), "certificate": out})
                );
            } else {
                println!(
                    "issued serial {} -> {}",
                    hex::encode(&cert.serial),
                    out.display()
                );
            }
            Ok(())
        }
        SignerCmd::Ceremony { command } => ceremony_cmd(socket, command, json),
        SignerCmd::AuditKey { out } => {
            let mut c = SignerClient::connect(socket)?;
            let Response::PublicKeys(k) = c.call(Request::PublicKeys)? else {
                return Err(refused("unexpected answer to PublicKeys".into()));
            };
            let pem_text = pem::encode("PUBLIC KEY", &k.audit_spki_der);
            let sha256 = hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                &k.audit_spki_der,
            ));
            if let Some(out) = &out {
                write_out(out, &pem_text)?;
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"algorithm": k.audit_algorithm.as_str(),
                        "spki_sha256": sha256, "pem": pem_text})
                );
            } else if let Some(out) = &out {
                println!(
                    "audit key ({}, SubjectPublicKeyInfo SHA-256 {sha256}) written to {}",
                    k.audit_algorithm.as_str(),
                    out.display()
                );
            } else {
                print!("{pem_text}");
            }
            Ok(())
        }
    }
}

fn ceremony_cmd(socket: &Path, command: SignerCeremonyCmd, json: bool) -> Result<(), Failure> {
    match command {
        SignerCeremonyCmd::New {
            purpose,
            ca_id,
            parent,
            subject,
            days,
            algorithm,
            path_len,
            custodian,
            threshold,
            out,
        } => {
            let purpose = Purpose::parse(&purpose).ok_or_else(|| {
                usage(format!(
                    "unknown purpose {purpose:?}; use root, intermediate or custodians"
                ))
            })?;
            let op = match purpose {
                Purpose::Root | Purpose::Intermediate => {
                    let algorithm = Algorithm::parse(&algorithm)
                        .ok_or_else(|| usage(format!("unknown algorithm {algorithm:?}; use ecdsa-p256, ecdsa-p384 or rsa-3072")))?;
                    // Backdated an hour: certificates issued right after the
                    // ceremony must fit inside the CA's validity.
                    let nb = now() - 3600;
                    let params = CaParams {
                        ca_id: ca_id.ok_or_else(|| usage("--ca-id is required".into()))?,
                        parent: parent.clone(),
                        algorithm,
                        subject: parse_subject(subject.as_deref().unwrap_or(""))?,
                        validity: Validity {
                            not_before: nb,
                            not_after: nb + i64::from(days) * 86_400,
                        },
                        path_len,
                        urls: Urls::default(),
                    };
                    if purpose == Purpose::Root {
                        if parent.is_some() {
                            return Err(usage(
                                "a root has no --parent; did you mean --purpose intermediate?"
                                    .into(),
                            ));
                        }
                        CeremonyOp::CreateRoot(params)
                    } else {
                        if parent.is_none() {
                            return Err(usage(
                                "an intermediate needs --parent <issuing CA id>".into(),
                            ));
                        }
                        CeremonyOp::CreateIntermediate(params)
                    }
                }
                Purpose::Custodians => {
                    let mut custodians = Vec::new();
                    for spec in &custodian {
                        let (name, file) = spec.split_once('=').ok_or_else(|| {
                            usage(format!(
                                "--custodian {spec:?}: expected NAME=PUBLIC_KEY_FILE"
                            ))
                        })?;
                        let text = std::fs::read_to_string(file)
                            .map_err(|e| format!("cannot read {file}: {e}"))?;
                        let hex_part = text.split_whitespace().next().unwrap_or("");
                        let public_key: [u8; 32] =
                            hex::decode(hex_part.strip_prefix("ed25519:").unwrap_or(hex_part))
                                .ok()
                                .and_then(|b| b.try_into().ok())
                                .ok_or_else(|| format!("{file} is not a custodian public key"))?;
                        custodians.push(Custodian {
                            name: name.to_string(),
                            public_key,
                        });
                    }
                    CeremonyOp::ChangeCustodians(CustodianSet {
                        threshold: threshold
                            .ok_or_else(|| usage("--threshold is required".into()))?,
                        custodians,
                    })
                }
                Purpose::Rotate | Purpose::CrossSign => {
                    return Err(usage(format!(
                        "purpose {} is not offered by `signer ceremony new` in this release",
                        purpose.as_str()
                    )));
                }
            };
            // Approvals name the signer and its custodian set: ask it.
            let mut c = SignerClient::connect(socket).map_err(|e| {
                refused(format!(
                    "{e}; `signer ceremony new` asks the signer which signer and custodian set \
                     the ceremony is for: run it where the signer runs, or pass --socket"
                ))
            })?;
            let Response::PublicKeys(keys) = c.call(Request::PublicKeys)? else {
                return Err(refused("unexpected answer to PublicKeys".into()));
            };
            let ctx = CeremonyContext::new(&keys.audit_spki_der, &keys.custodians);
            let mut id = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| "no randomness for a ceremony id".to_string())?;
            let file = CeremonyFile {
                format: CEREMONY_FILE_FORMAT.into(),
                ceremony_id: hex::encode(id),
                signer_id: hex::encode(ctx.signer_id),
                custodians_sha256: hex::encode(ctx.custodians_sha256),
                op,
                approvals: vec![],
            };
            let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
            castellan::files::create_new(&out, &text, 0o644).map_err(refused)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ceremony_id": file.ceremony_id,
                        "purpose": file.op.purpose().as_str(),
                        "description": castellan::names::describe_ceremony(&file.op),
                        "parameters_sha256": hex::encode(statement_digest(&file.op)),
                        "signer_id": file.signer_id, "file": out})
                );
            } else {
                println!(
                    "ceremony {} ({}) written to {}",
                    file.ceremony_id,
                    castellan::names::describe_ceremony(&file.op),
                    out.display()
                );
            }
            Ok(())
        }
        SignerCeremonyCmd::Show { file } => {
            let (id, f) = read_ceremony(&file)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ceremony_id": f.ceremony_id, "purpose": f.op.purpose().as_str(),
                    "parameters_sha256": hex::encode(statement_digest(&f.op)),
                    "signer_id": f.signer_id, "custodians_sha256": f.custodians_sha256,
                    "approvals": f.approvals.iter().map(|a| serde_json::json!({"name": a.name, "custodian": a.custodian})).collect::<Vec<_>>()})
                );
            } else {
                println!(
                    "ceremony {}: {}",
                    hex::encode(id),
                    castellan::names::describe_ceremony(&f.op)
                );
                println!(
                    "  parameters sha256: {}",
                    hex::encode(statement_digest(&f.op))
                );
                println!("  for signer: {}", f.signer_id);
                println!("  custodian set sha256: {}", f.custodians_sha256);
                println!("  approvals: {}", f.approvals.len());
                for a in &f.approvals {
                    println!(
                        "    {} ({}…)",
                        a.name,
                        &a.custodian[..16.min(a.custodian.len())]
                    );
                }
            }
            Ok(())
        }
        SignerCeremonyCmd::Approve {
            file,
            key,
            passphrase_file,
        } => {
            let (id, mut f) = read_ceremony(&file)?;
            let pass = passphrase_from(&passphrase_file)?;
            let k = CustodianKey::load(&key, &pass)?;
            let ctx = ceremony_context(&f.signer_id, &f.custodians_sha256).ok_or_else(|| {
                refused(format!(
                    "{}: malformed signer id or custodian set digest",
                    file.display()
                ))
            })?;
            let a = k.approve(&ctx, &id, &f.op);
            let pk = hex::encode(a.custodian);
            // One approval per custodian: approving again replaces, never adds.
            f.approvals.retain(|x| x.custodian != pk);
            f.approvals.push(FileApproval {
                name: k.name.clone(),
                custodian: pk,
                signature: hex::encode(&a.signature),
            });
            write_ceremony(&file, &f)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ceremony_id": hex::encode(id), "custodian": k.name,
                        "public_key": hex::encode(k.public_key()),
                        "description": castellan::names::describe_ceremony(&f.op),
                        "signer_id": f.signer_id, "approvals": f.approvals.len(), "file": file})
                );
            } else {
                println!(
                    "{} approved ceremony {}: {} (for signer {})",
                    k.name,
                    hex::encode(id),
                    castellan::names::describe_ceremony(&f.op),
                    short(&f.signer_id, 16)
                );
            }
            Ok(())
        }
        SignerCeremonyCmd::Execute { file, out } => {
            let (id, f) = read_ceremony(&file)?;
            if let Some(out) = &out {
                castellan::files::check_replaceable(out).map_err(refused)?;
            }
            let mut approvals = Vec::new();
            for a in &f.approvals {
                approvals.push(Approval {
                    custodian: hex::decode(&a.custodian)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| format!("approval of {} is malformed", a.name))?,
                    signature: hex::decode(&a.signature)
                        .map_err(|_| format!("approval of {} is malformed", a.name))?,
                });
            }
            let mut c = SignerClient::connect(socket)?;
            let Response::Ceremony(outcome) = c.call(Request::Ceremony {
                op: f.op.clone(),
                proof: QuorumProof {
                    ceremony_id: id,
                    approvals,
                },
            })?
            else {
                return Err(refused("unexpected answer".into()));
            };
            let (der, summary, made) = match &outcome {
                CeremonyOutcome::Ca(info) => (
                    Some(info.certificate_der.clone()),
                    serde_json::json!({"ca_id": info.ca_id}),
                    format!("CA {:?} created", info.ca_id),
                ),
                CeremonyOutcome::CrossCertificate(c) => (
                    Some(c.der.clone()),
                    serde_json::json!({"cross_certificate_serial": hex::encode(&c.serial)}),
                    format!("cross-certificate {}", hex::encode(&c.serial)),
                ),
                CeremonyOutcome::Custodians(s) => (
                    None,
                    serde_json::json!({"custodians": {"threshold": s.threshold,
                        "count": s.custodians.len()}}),
                    format!(
                        "custodian set is now {} of {}",
                        s.threshold,
                        s.custodians.len()
                    ),
                ),
            };
            if let (Some(out), Some(der)) = (&out, &der) {
                castellan::files::replace(out, pem::encode("CERTIFICATE", der).as_bytes())
                    .map_err(|e| {
                        refused(format!(
                            "{e}; ceremony {} WAS executed ({made}): for a CA, write its \
                             certificate with `castellanctl signer ca-cert --ca <id> --out <file>`",
                            hex::encode(id)
                        ))
                    })?;
            }
            if json {
                let mut v = serde_json::json!({"ceremony_id": hex::encode(id),
                    "executed": true, "certificate": out});
                if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), summary) {
                    v.extend(extra);
                }
                println!("{v}");
            } else {
                println!("ceremony {} executed: {made}", hex::encode(id));
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Commands on castellan's admin socket.

struct Ctx {
    client: AdminClient,
    json: bool,
}

impl Ctx {
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        Ok(self.client.get(path)?)
    }

    fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        Ok(self.client.post(path, body)?)
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("cannot encode output: {e}")))?;
    println!("{text}");
    Ok(())
}

/// A listing: the JSON as it came with `--json`; otherwise `empty` when
/// nothing matched, or a table of one `row` per item.
fn print_list<T: Serialize>(
    ctx: &Ctx,
    list: &[T],
    empty: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), Failure> {
    if ctx.json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("{empty}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list.iter().map(row).collect();
    table(header, &rows);
    Ok(())
}

/// Every item of a paged listing (at most `limit`): asks page after page,
/// each with the `next` cursor of the one before, as `cursor_key`.
fn fetch_pages<P: serde::de::DeserializeOwned, T>(
    ctx: &Ctx,
    path: &str,
    pairs: &[(&str, Option<String>)],
    limit: Option<usize>,
    cursor_key: &str,
    split: impl Fn(P) -> (Vec<T>, Option<String>),
) -> Result<Vec<T>, Failure> {
    if limit == Some(0) {
        // Would show nothing and say that nothing matched.
        return Err(usage(
            "--limit 0 would show nothing; give at least 1, or leave --limit out for all".into(),
        ));
    }
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = limit
            .map_or(MAX_PAGE, |l| l.saturating_sub(all.len()))
            .min(MAX_PAGE);
        if want == 0 {
            break;
        }
        let mut q: Vec<(&str, Option<String>)> = pairs.to_vec();
        q.push(("limit", Some(want.to_string())));
        q.push((cursor_key, cursor.take()));
        let page: P = ctx.get(&format!("{path}{}", query_string(&q)))?;
        let (items, next) = split(page);
        all.extend(items);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    Ok(all)
}

/// Prints rows under a header, columns aligned.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let pad = width[i].saturating_sub(c.chars().count());
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string()
    };
    println!("{}", line(header.to_vec()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n).collect();
        format!("{head}…")
    }
}

/// Unix seconds as "YYYY-MM-DD HH:MM:SS UTC".
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn seg(s: &str) -> String {
    encode_component(s)
}

fn status_cmd(ctx: &Ctx) -> Result<(), Failure> {
    let s: StatusView = ctx.get("/v1/status")?;
    if ctx.json {
        return print_json(&s);
    }
    println!("castellan {}", s.version);
    println!(
        "  event log:    {} events, head {}",
        s.events,
        short(&s.head_hash, 16)
    );
    if !s.log_writable {
        println!(
            "  event log:    NOT WRITABLE — {}",
            s.log_problem
                .as_deref()
                .unwrap_or("restart castellan (reopening the file repairs it)")
        );
    }
    match s.last_checkpoint {
        Some(c) => println!("  checkpoint:   last signed at event {c}"),
        None => println!("  checkpoint:   none signed yet (castellanctl audit checkpoint)"),
    }
    if let Some(p) = &s.checkpoint_problem {
        println!("  checkpoint:   LOG ROLLED BACK — {p}");
    }
    if s.signer_reachable {
        println!(
            "  signer:       reachable ({} backend)",
            s.signer_backend.as_deref().unwrap_or("unknown")
        );
    } else {
        println!(
            "  signer:       UNREACHABLE — issuance, revocation and ceremonies wait for it; \
             check `systemctl status castellan-signer`"
        );
    }
    if let Some(c) = &s.custodians {
        println!(
            "  custodians:   {} of {} ({})",
            c.threshold,
            c.members.len(),
            c.members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("  CAs:          {}", s.cas);
    println!("  certificates: {}", s.certificates);
    if s.pending_intents > 0 {
        println!(
            "  pending:      {} issuance(s) without a result (possibly issued; revocable; \
             see `castellanctl cert list --status possibly-issued`)",
            s.pending_intents
        );
    }
    println!("  you:          {} ({:?})", s.actor, s.role);
    Ok(())
}

// ----- ceremonies

fn read_custodian_pub(spec: &str) -> Result<(String, [u8; 32]), Failure> {
    let (name, file) = spec.split_once('=').ok_or_else(|| {
        usage(format!(
            "--custodian {spec:?}: expected NAME=PUBLIC_KEY_FILE"
        ))
    })?;
    let text =
        std::fs::read_to_string(file).map_err(|e| refused(format!("cannot read {file}: {e}")))?;
    let hex_part = text.split_whitespace().next().unwrap_or("");
    let key: [u8; 32] = hex::decode(hex_part.strip_prefix("ed25519:").unwrap_or(hex_part))
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            refused(format!(
                "{file} is not a custodian public key (expected `ed25519:<hex> <name>`)"
            ))
        })?;
    Ok((name.to_string(), key))
}

fn validity_line(v: &Validity) -> String {
    format!(
        "{} to {} ({} days)",
        utc(v.not_before),
        utc(v.not_after),
        (v.not_after - v.not_before) / 86_400
    )
}

fn urls_lines(u: &Urls, out: &mut Vec<String>) {
    for (what, list) in [
        ("OCSP", &u.ocsp),
        ("CA issuers", &u.ca_issuers),
        ("CRL", &u.crl),
    ] {
        for url in list {
            out.push(format!("{what} URL:      {url}"));
        }
    }
}

/// Every parameter of a ceremony, as the custodian is asked to approve it.
fn op_details(op: &CeremonyOp) -> Vec<String> {
    let mut out = Vec::new();
    let path_len = |p: Option<u8>| p.map_or("unlimited".to_string(), |n| n.to_string());
    match op {
        CeremonyOp::CreateRoot(p) | CeremonyOp::CreateIntermediate(p) => {
            let what = if matches!(op, CeremonyOp::CreateRoot(_)) {
                "create a self-signed ROOT CA"
            } else {
                "create an INTERMEDIATE CA"
            };
            out.push(format!("operation:     {what}"));
            out.push(format!("CA id:         {}", p.ca_id));
            if let Some(parent) = &p.parent {
                out.push(format!("signed by:     {parent}"));
            }
            out.push(format!(
                "subject:       {}",
                castellan::names::format_subject(&p.subject)
            ));
            out.push(format!("key algorithm: {} (new key)", p.algorithm.as_str()));
            out.push(format!("validity:      {}", validity_line(&p.validity)));
            out.push(format!("path length:   {}", path_len(p.path_len)));
            urls_lines(&p.urls, &mut out);
        }
        CeremonyOp::Rotate(r) => {
            out.push("operation:     ROTATE a CA to a new key".into());
            out.push(format!(
                "CA:            {} → new CA id {}",
                r.ca_id, r.new_ca_id
            ));
            out.push(format!(
                "subject:       {}",
                castellan::names::format_subject(&r.subject)
            ));
            out.push(format!("key algorithm: {} (new key)", r.algorithm.as_str()));
            out.push(format!("validity:      {}", validity_line(&r.validity)));
            out.push(format!("path length:   {}", path_len(r.path_len)));
            urls_lines(&r.urls, &mut out);
        }
        CeremonyOp::CrossSign(c) => {
            use der::Decode;
            out.push("operation:     CROSS-SIGN another CA's certificate".into());
            out.push(format!("issuer:        {}", c.issuer));
            match x509_cert::Certificate::from_der(&c.subject_certificate_der) {
                Ok(cert) => {
                    out.push(format!(
                        "subject:       {}",
                        cert.tbs_certificate().subject()
                    ));
                    out.push(format!(
                        "its issuer:    {}",
                        cert.tbs_certificate().issuer()
                    ));
                }
                Err(e) => out.push(format!(
                    "subject:       (the certificate does not parse: {e})"
                )),
            }
            let fp = ring::digest::digest(&ring::digest::SHA256, &c.subject_certificate_der);
            out.push(format!("cert sha256:   {}", hex::encode(fp.as_ref())));
            out.push(format!("validity:      {}", validity_line(&c.validity)));
            out.push(format!("path length:   {}", path_len(c.path_len)));
            urls_lines(&c.urls, &mut out);
        }
        CeremonyOp::ChangeCustodians(s) => {
            out.push(format!(
                "operation:     REPLACE the custodian set: {} of {} must approve from now on",
                s.threshold,
                s.custodians.len()
            ));
            for c in &s.custodians {
                out.push(format!(
                    "custodian:     {} ed25519:{}",
                    c.name,
                    hex::encode(c.public_key)
                ));
            }
        }
    }
    out
}

fn approve_hint(id: &str) -> String {
    format!(
        "castellanctl ceremony approve {id} --key <custodian key file> --passphrase-file <file>"
    )
}

fn ceremony_next(c: &CeremonyView) -> Option<String> {
    match c.state.as_str() {
        "executed" | "failed" | "expired" | "cancelled" => None,
        _ if c.approved >= c.threshold => Some(format!(
            "next: quorum reached ({} of {}); an admin runs `castellanctl ceremony execute {}`",
            c.approved, c.threshold, c.id
        )),
        _ => Some(format!(
            "next: {} more custodian approval(s) needed; each custodian runs `{}`",
            c.threshold.saturating_sub(c.approved),
            approve_hint(&c.id)
        )),
    }
}

fn print_ceremony(c: &CeremonyView) {
    println!("ceremony {} ({})", c.id, c.purpose);
    println!("  {}", c.description);
    println!("  state:      {}", c.state);
    println!("  opened by:  {} at {}", c.opened_by, c.opened_at);
    println!("  parameters: sha256 {}", c.parameters_sha256);
    if let Ok(op) = serde_json::from_value::<CeremonyOp>(c.op.clone()) {
        for line in op_details(&op) {
            println!("    {line}");
        }
    }
    println!("  approvals:  {} of {}", c.approved, c.threshold);
    if !c.approvals.is_empty() {
        let rows: Vec<Vec<String>> = c
            .approvals
            .iter()
            .map(|a| {
                vec![
                    format!("    {}", a.name),
                    short(&a.custodian, 16),
                    a.actor.clone(),
                    a.time.clone(),
                ]
            })
            .collect();
        table(&["    CUSTODIAN", "KEY", "SUBMITTED BY", "TIME"], &rows);
    }
    if let Some(e) = &c.last_error {
        println!("  last error: {e}");
    }
    if let Some(line) = ceremony_made(c) {
        println!("  made:       {line}");
    }
}

/// What an executed ceremony made, in one line, or `None` (not executed,
/// or a custodian change).
fn ceremony_made(c: &CeremonyView) -> Option<String> {
    match (&c.ca, &c.certificate) {
        (Some(ca), _) => Some(format!(
            "CA {}: {} ({}), valid until {}",
            ca.id, ca.subject, ca.algorithm, ca.not_after
        )),
        (None, Some(cert)) => Some(format!(
            "cross-certificate {} issued by {}; listed and revocable like any certificate (`castellanctl cert show {}`)",
            cert.serial, cert.issuer, cert.serial
        )),
        (None, None) => None,
    }
}

/// Catches a mistyped CA id before a ceremony is opened and custodians are
/// gathered to approve it: a CA id that is taken can never be created
/// again (refused); a CA to sign with or to rotate that castellan does not
/// know, and that no open ceremony creates, gets a warning (castellan may
/// not have seen a CA made on the signer yet). Skipped if castellan cannot
/// be asked.
fn check_ca_names(
    ctx: &Ctx,
    purpose: &str,
    ca_id: Option<&str>,
    new_ca_id: Option<&str>,
    parent: Option<&str>,
) -> Result<(), Failure> {
    let Ok(cas) = ctx.get::<Vec<CaView>>("/v1/cas") else {
        return Ok(());
    };
    let in_use = || {
        let ids: Vec<&str> = cas.iter().map(|c| c.id.as_str()).collect();
        if ids.is_empty() {
            "none yet".to_string()
        } else {
            ids.join(", ")
        }
    };
    let created = match purpose {
        "root" | "intermediate" => ca_id.map(|id| (id, "--ca-id")),
        "rotate" => new_ca_id.map(|id| (id, "--new-ca-id")),
        _ => None,
    };
    if let Some((id, flag)) = created
        && let Some(ca) = cas.iter().find(|c| c.id == id)
    {
        return Err(refused(format!(
            "CA {id:?} exists already ({}, {}); a CA id is used once: choose another {flag} \
             (in use: {}){}",
            ca.subject,
            ca.status,
            in_use(),
            if purpose == "rotate" {
                String::new()
            } else {
                format!(
                    ", or give {id:?} a new key with --purpose rotate --ca-id {id} --new-ca-id <new id>"
                )
            }
        )));
    }
    let needed = match purpose {
        "intermediate" | "cross-sign" => parent.map(|p| (p, "--parent")),
        "rotate" => ca_id.map(|id| (id, "--ca-id")),
        _ => None,
    };
    if let Some((id, flag)) = needed
        && !cas.iter().any(|c| c.id == id)
    {
        let pending = ctx
            .get::<Vec<CeremonyView>>("/v1/ceremonies")
            .unwrap_or_default()
            .iter()
            .filter(|c| c.state == "open")
            .filter_map(|c| serde_json::from_value::<CeremonyOp>(c.op.clone()).ok())
            .any(|op| match op {
                CeremonyOp::CreateRoot(p) | CeremonyOp::CreateIntermediate(p) => p.ca_id == id,
                CeremonyOp::Rotate(r) => r.new_ca_id == id,
                _ => false,
            });
        if !pending {
            eprintln!(
                "castellanctl: warning: {flag} {id:?}: castellan knows no CA {id:?} (known: {}) \
                 and no open ceremony creates it; this ceremony cannot be executed until it \
                 exists — if {id:?} is a typo, open a new ceremony with the right id",
                in_use()
            );
        }
    }
    Ok(())
}

/// A ceremony id as the admin typed it: trimmed, lower case, without the
/// "…" of a shortened id. Anything but 32 hex digits is refused here,
/// naming the ceremonies it could be (a shortened id, a prefix) — never
/// guessed: an approval must name its ceremony exactly.
fn ceremony_id_arg(ctx: &Ctx, id: &str) -> Result<String, Failure> {
    let t = id.trim().trim_end_matches('…').to_ascii_lowercase();
    if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(t);
    }
    let candidates: Vec<CeremonyView> = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit())
    {
        ctx.get::<Vec<CeremonyView>>("/v1/ceremonies")
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.id.starts_with(&t))
            .collect()
    } else {
        Vec::new()
    };
    let hint = match candidates.as_slice() {
        [] => "list them with `castellanctl ceremony list`".to_string(),
        [c] => format!("did you mean {} ({}: {})?", c.id, c.state, c.description),
        many => format!(
            "it starts {} ceremonies: {}",
            many.len(),
            many.iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(usage(format!(
        "{id:?} is not a ceremony id (32 hex digits); {hint}"
    )))
}

fn admin_ceremony_cmd(ctx: &Ctx, command: CeremonyCmd) -> Result<(), Failure> {
    let command = match command {
        CeremonyCmd::Approve {
            id,
            key,
            passphrase_file,
        } => CeremonyCmd::Approve {
            id: ceremony_id_arg(ctx, &id)?,
            key,
            passphrase_file,
        },
        CeremonyCmd::Show { id } => CeremonyCmd::Show {
            id: ceremony_id_arg(ctx, &id)?,
        },
        CeremonyCmd::Execute { id, out } => CeremonyCmd::Execute {
            id: ceremony_id_arg(ctx, &id)?,
            out,
        },
        other => other,
    };
    match command {
        CeremonyCmd::Open {
            purpose,
            ca_id,
            parent,
            subject,
            days,
            algorithm,
            path_len,
            custodians,
            threshold,
            new_ca_id,
            certificate,
        } => {
            // Catch mistakes here, before anything is recorded; castellan
            // checks everything again.
            if let Some(a) = &algorithm
                && Algorithm::parse(a).is_none()
            {
                return Err(usage(format!(
                    "unknown algorithm {a:?}; use ecdsa-p256, ecdsa-p384 or rsa-3072"
                )));
            }
            if let Some(s) = &subject {
                parse_subject(s)?;
            }
            let mut keys = Vec::new();
            let mut cert_pem = None;
            match purpose.as_str() {
                "root" | "intermediate" => {
                    if ca_id.is_none() || subject.is_none() {
                        return Err(usage(format!(
                            "--purpose {purpose} needs --ca-id and --subject, e.g. \
                             --ca-id root --subject \"CN=Example Root CA,O=Example\""
                        )));
                    }
                    if purpose == "root" && parent.is_some() {
                        return Err(usage(
                            "a root has no --parent; did you mean --purpose intermediate?".into(),
                        ));
                    }
                    if purpose == "intermediate" && parent.is_none() {
                        return Err(usage(
                            "an intermediate needs --parent <issuing CA id>".into(),
                        ));
                    }
                }
                "rotate" => {
                    if ca_id.is_none() || new_ca_id.is_none() {
                        return Err(usage(
                            "--purpose rotate needs --ca-id <the CA to rotate> and --new-ca-id <its successor>".into(),
                        ));
                    }
                }
                "cross-sign" => {
                    let Some(file) = &certificate else {
                        return Err(usage(
                            "--purpose cross-sign needs --parent <issuing CA> and --certificate <CA certificate PEM file>".into(),
                        ));
                    };
                    if parent.is_none() {
                        return Err(usage(
                            "--purpose cross-sign needs --parent <the issuing CA>".into(),
                        ));
                    }
                    let raw = std::fs::read(file)
                        .map_err(|e| refused(format!("cannot read {}: {e}", file.display())))?;
                    let der = pem::decode(&raw, &["CERTIFICATE"])
                        .map_err(|e| usage(format!("{}: {e}", file.display())))?;
                    cert_pem = Some(pem::encode("CERTIFICATE", &der));
                }
                _ => {
                    let Some(t) = threshold else {
                        return Err(usage(
                            "--purpose custodians needs --threshold M and --custodian NAME=PUBFILE for each of the n custodians".into(),
                        ));
                    };
                    for spec in &custodians {
                        let (name, key) = read_custodian_pub(spec)?;
                        keys.push((name, hex::encode(key)));
                    }
                    if t == 0 || usize::from(t) > keys.len() {
                        return Err(usage(format!(
                            "--threshold {t} must be between 1 and the number of custodians ({})",
                            keys.len()
                        )));
                    }
                }
            }
            check_ca_names(
                ctx,
                &purpose,
                ca_id.as_deref(),
                new_ca_id.as_deref(),
                parent.as_deref(),
            )?;
            let req = OpenCeremony {
                purpose,
                ca_id,
                parent,
                subject,
                days,
                algorithm,
                path_len,
                custodians: keys,
                threshold,
                new_ca_id,
                certificate_pem: cert_pem,
            };
            let c: CeremonyView = ctx.post("/v1/ceremonies", &req)?;
            if ctx.json {
                return print_json(&c);
            }
            println!("ceremony {} opened: {}", c.id, c.description);
            println!("  approvals: {} of {}", c.approved, c.threshold);
            println!("next: each approving custodian runs");
            println!("  {}", approve_hint(&c.id));
            println!("then an admin runs");
            println!("  castellanctl ceremony execute {}", c.id);
            Ok(())
        }
        CeremonyCmd::Approve {
            id,
            key,
            passphrase_file,
        } => {
            let c: CeremonyView = ctx.get(&format!("/v1/ceremonies/{}", seg(&id)))?;
            if !c.id.eq_ignore_ascii_case(&id) {
                return Err(refused(format!(
                    "castellan answered with ceremony {} when asked for {id}; not approving",
                    c.id
                )));
            }
            let ceremony_id: CeremonyId =
                hex::decode(&c.id)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| refused(format!("ceremony id {:?} is malformed", c.id)))?;
            let op: CeremonyOp = serde_json::from_value(c.op.clone()).map_err(|e| {
                refused(format!(
                    "cannot read the operation of ceremony {}: {e}; is castellanctl the same \
                     version as castellan?",
                    c.id
                ))
            })?;
            // The statement is computed here from the operation shown to the
            // custodian; a digest from castellan is never signed.
            let digest = hex::encode(statement_digest(&op));
            let (Some(signer_id), Some(custodians_sha256)) = (&c.signer_id, &c.custodians_sha256)
            else {
                return Err(refused(format!(
                    "castellan does not say which signer ceremony {} is for (is castellan-signer \
                     running, and castellan the same version as castellanctl?); not approving",
                    c.id
                )));
            };
            let for_signer = ceremony_context(signer_id, custodians_sha256).ok_or_else(|| {
                refused(format!(
                    "castellan sent a malformed signer id or custodian set digest for ceremony {}; \
                     not approving",
                    c.id
                ))
            })?;
            let pass = passphrase_from(&passphrase_file)?;
            let k = CustodianKey::load(&key, &pass)?;
            let approval = k.approve(&for_signer, &ceremony_id, &op);
            let body = ApproveCeremony {
                custodian: hex::encode(approval.custodian),
                signature: hex::encode(&approval.signature),
            };
            if !ctx.json {
                println!(
                    "{} (ed25519:{}) approves ceremony {}, opened by {} at {}:",
                    k.name,
                    short(&body.custodian, 16),
                    c.id,
                    c.opened_by,
                    c.opened_at
                );
                for line in op_details(&op) {
                    println!("  {line}");
                }
                println!("  parameters sha256 (computed here): {digest}");
                println!("  for signer: {signer_id}");
                println!("  custodian set sha256: {custodians_sha256}");
            }
            if !c.parameters_sha256.eq_ignore_ascii_case(&digest) {
                eprintln!(
                    "castellanctl: warning: castellan reports parameters sha256 {} but the \
                     operation it sent hashes to {digest}; your signature covers what is shown \
                     above — compare with the other custodians out of band",
                    c.parameters_sha256
                );
            }
            let after: CeremonyView =
                ctx.post(&format!("/v1/ceremonies/{}/approvals", seg(&c.id)), &body)?;
            if ctx.json {
                return print_json(&after);
            }
            println!(
                "approved: {} of {} approvals",
                after.approved, after.threshold
            );
            if let Some(next) = ceremony_next(&after) {
                println!("{next}");
            }
            Ok(())
        }
        CeremonyCmd::Show { id } => {
            let c: CeremonyView = ctx.get(&format!("/v1/ceremonies/{}", seg(&id)))?;
            if ctx.json {
                return print_json(&c);
            }
            print_ceremony(&c);
            if let Some(next) = ceremony_next(&c) {
                println!("{next}");
            }
            Ok(())
        }
        CeremonyCmd::List => {
            let list: Vec<CeremonyView> = ctx.get("/v1/ceremonies")?;
            if ctx.json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!(
                    "no ceremonies yet; open one with `castellanctl ceremony open --purpose …`"
                );
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.purpose.clone(),
                        c.state.clone(),
                        format!("{}/{}", c.approved, c.threshold),
                        c.opened_at.clone(),
                        c.description.clone(),
                    ]
                })
                .collect();
            table(
                &["ID", "PURPOSE", "STATE", "APPROVED", "OPENED", "WHAT"],
                &rows,
            );
            Ok(())
        }
        CeremonyCmd::Execute { id, out } => {
            if let Some(out) = &out {
                castellan::files::check_replaceable(out).map_err(refused)?;
            }
            let c: CeremonyView = ctx.post(
                &format!("/v1/ceremonies/{}/execute", seg(&id)),
                &serde_json::json!({}),
            )?;
            if let (Some(out), Some(cert)) = (&out, &c.certificate) {
                write_out(out, &cert.certificate_pem)?;
            }
            if ctx.json {
                return print_json(&c);
            }
            println!("ceremony {} {}: {}", c.id, c.state, c.description);
            if let Some(line) = ceremony_made(&c) {
                println!("  {line}");
                match (&out, &c.ca) {
                    (Some(out), _) => println!("  certificate: {}", out.display()),
                    (None, Some(ca)) => println!(
                        "  certificate: `castellanctl ca show {} --out <file>`",
                        ca.id
                    ),
                    (None, None) => println!(
                        "  certificate: `castellanctl --json ceremony show {}` (certificate.certificate_pem)",
                        c.id
                    ),
                }
            }
            if let Some(e) = &c.last_error {
                println!("  last error: {e}");
            }
            Ok(())
        }
    }
}

// ----- CAs

fn ca_cmd(ctx: &Ctx, command: CaCmd) -> Result<(), Failure> {
    match command {
        CaCmd::List => {
            let list: Vec<CaView> = ctx.get("/v1/cas")?;
            if ctx.json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!(
                    "no CAs yet; a root is made by a ceremony: `castellanctl ceremony open --purpose root …`"
                );
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.status.clone(),
                        c.algorithm.clone(),
                        c.parent.clone().unwrap_or_else(|| "(root)".into()),
                        c.not_after.clone(),
                        c.subject.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "STATUS",
                    "ALGORITHM",
                    "PARENT",
                    "NOT AFTER",
                    "SUBJECT",
                ],
                &rows,
            );
            Ok(())
        }
        CaCmd::Show { id, out } => {
            let c: CaView = ctx.get(&format!("/v1/cas/{}", seg(&id)))?;
            if let Some(out) = &out {
                write_out(out, &c.certificate_pem)?;
            }
            if ctx.json {
                return print_json(&c);
            }
            println!("CA {} ({})", c.id, c.status);
            println!("  subject:    {}", c.subject);
            println!(
                "  parent:     {}",
                c.parent.as_deref().unwrap_or("none (self-signed root)")
            );
            println!("  algorithm:  {}", c.algorithm);
            println!("  validity:   {} to {}", c.not_before, c.not_after);
            match &out {
                Some(out) => println!("  certificate written to {}", out.display()),
                None => println!("  certificate: add --out <file> to save it (PEM)"),
            }
            Ok(())
        }
    }
}

// ----- issuance

fn parse_san(s: &str) -> Result<rcgen::SanType, Failure> {
    let bad = |why: String| usage(format!("--san {s:?}: {why}"));
    let (kind, value) = match s.split_once(':') {
        Some((k, v))
            if ["dns", "ip", "email", "uri"].contains(&k.to_ascii_lowercase().as_str()) =>
        {
            (k.to_ascii_lowercase(), v)
        }
        _ => {
            // A bare value: an IP address or a DNS name.
            if s.parse::<std::net::IpAddr>().is_ok() {
                ("ip".to_string(), s)
            } else {
                ("dns".to_string(), s)
            }
        }
    };
    let ia5 = |v: &str| {
        rcgen::string::Ia5String::try_from(v)
            .map_err(|_| bad("must be ASCII (use the A-label of an internationalised name)".into()))
    };
    Ok(match kind.as_str() {
        "ip" => rcgen::SanType::IpAddress(
            value
                .parse()
                .map_err(|_| bad(format!("{value:?} is not an IP address")))?,
        ),
        "email" => rcgen::SanType::Rfc822Name(ia5(value)?),
        "uri" => rcgen::SanType::URI(ia5(value)?),
        _ => {
            if value.is_empty() {
                return Err(bad("empty DNS name".into()));
            }
            rcgen::SanType::DnsName(ia5(value)?)
        }
    })
}

fn rcgen_dn(dn: &DistinguishedName) -> rcgen::DistinguishedName {
    let mut out = rcgen::DistinguishedName::new();
    for a in &dn.0 {
        let (ty, v) = match a {
            NameAttribute::CommonName(v) => (rcgen::DnType::CommonName, v),
            NameAttribute::Organization(v) => (rcgen::DnType::OrganizationName, v),
            NameAttribute::OrganizationalUnit(v) => (rcgen::DnType::OrganizationalUnitName, v),
            NameAttribute::Country(v) => (rcgen::DnType::CountryName, v),
            NameAttribute::Locality(v) => (rcgen::DnType::LocalityName, v),
            NameAttribute::State(v) => (rcgen::DnType::StateOrProvinceName, v),
            NameAttribute::SerialNumber(v) => (rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), v),
            NameAttribute::DomainComponent(v) => (
                rcgen::DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 25]),
                v,
            ),
        };
        out.push(ty, v.as_str());
    }
    out
}

/// Writes a private key: a new file, mode 0600 from its creation, whole or
/// not at all.
fn write_private_key(path: &Path, pem_text: &str) -> Result<(), Failure> {
    castellan::files::create_new(path, pem_text.as_bytes(), 0o600).map_err(refused)
}

/// A new key and its CSR, made here; returns (CSR PEM, key PEM).
fn generate_key_and_csr(
    subject: &str,
    sans: &[String],
    algorithm: &str,
) -> Result<(String, Zeroizing<String>), Failure> {
    let dn = parse_subject(subject)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen_dn(&dn);
    params.subject_alt_names = sans
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<_, _>>()?;
    let alg = if algorithm == "ecdsa-p384" {
        &rcgen::PKCS_ECDSA_P384_SHA384
    } else {
        &rcgen::PKCS_ECDSA_P256_SHA256
    };
    let key = rcgen::KeyPair::generate_for(alg)
        .map_err(|e| refused(format!("cannot generate a key: {e}")))?;
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| refused(format!("cannot make the CSR: {e}")))?;
    Ok((csr, Zeroizing::new(key.serialize_pem())))
}

/// Whether two paths name the same file, however they are spelt
/// (`k.pem`, `./k.pem`, a symbolic link to it).
fn same_file(a: &Path, b: &Path) -> bool {
    // A stream (/dev/stdout) takes one output after the other.
    if std::fs::metadata(a).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return false;
    }
    let resolve = |p: &Path| -> PathBuf {
        if let Ok(full) = std::fs::canonicalize(p) {
            return full;
        }
        // Not there yet: its directory, resolved, and its name.
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match (std::fs::canonicalize(dir), p.file_name()) {
            (Ok(d), Some(name)) => d.join(name),
            _ => p.to_path_buf(),
        }
    };
    resolve(a) == resolve(b)
}

fn issue_cmd(ctx: &Ctx, a: IssueArgs) -> Result<(), Failure> {
    if a.chain_out.as_ref().is_some_and(|c| same_file(c, &a.out)) {
        return Err(usage(
            "--chain-out must differ from --out: the chain would replace the certificate".into(),
        ));
    }
    // Checked before anything is issued: a certificate that cannot be
    // saved would be issued for nothing.
    for out in std::iter::once(&a.out).chain(&a.chain_out) {
        castellan::files::check_replaceable(out).map_err(refused)?;
    }
    let mut key_written: Option<PathBuf> = None;
    let csr_pem = if a.generate_key {
        let (Some(subject), Some(key_out)) = (&a.subject, &a.key_out) else {
            return Err(usage("--generate-key needs --subject and --key-out".into()));
        };
        if same_file(key_out, &a.out) || a.chain_out.as_ref().is_some_and(|c| same_file(key_out, c))
        {
            return Err(usage(
                "--key-out must differ from --out and --chain-out".into(),
            ));
        }
        if a.sans.is_empty() {
            eprintln!(
                "castellanctl: note: no --san given; TLS clients ignore the CN, add --san DNS:<name> for a server"
            );
        }
        let (csr, key_pem) = generate_key_and_csr(subject, &a.sans, &a.key_algorithm)?;
        // Written before asking castellan, so a certificate is never issued
        // for a key that could not be saved; removed again if issuance fails.
        write_private_key(key_out, &key_pem)?;
        key_written = Some(key_out.clone());
        csr
    } else {
        let Some(path) = &a.csr else {
            return Err(usage("give --csr FILE or --generate-key".into()));
        };
        let raw = std::fs::read(path)
            .map_err(|e| refused(format!("cannot read {}: {e}", path.display())))?;
        csr::parse(&raw).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        if raw.starts_with(b"-----BEGIN") {
            String::from_utf8(raw).map_err(|_| usage(format!("{} is not text", path.display())))?
        } else {
            pem::encode("CERTIFICATE REQUEST", &raw)
        }
    };
    let req = IssueRequest {
        csr_pem,
        profile: a.profile.clone(),
        ttl_days: a.ttl,
        issuer: a.issuer.clone(),
        identity: a.identity.clone(),
    };
    let issued: Result<IssuedView, Failure> = ctx.post("/v1/certificates", &req);
    let issued = match issued {
        Ok(i) => i,
        Err(e) => {
            if let Some(k) = &key_written {
                let _ = std::fs::remove_file(k);
            }
            return Err(e);
        }
    };
    let saved = write_out(&a.out, &issued.certificate_pem).and_then(|()| match &a.chain_out {
        Some(chain) => write_out(chain, &issued.chain_pem),
        None => Ok(()),
    });
    if let Err(Failure::Api(e)) = saved {
        return Err(refused(format!(
            "{}; the certificate WAS issued, serial {}: save it with `castellanctl cert show {} \
             --out <file>`",
            e.message, issued.serial, issued.serial
        )));
    }
    if ctx.json {
        return print_json(&issued);
    }
    println!(
        "issued serial {} by {}, valid until {}",
        issued.serial, issued.issuer, issued.not_after
    );
    println!("  certificate: {}", a.out.display());
    match &a.chain_out {
        Some(c) => println!("  chain:       {}", c.display()),
        None if !issued.chain_pem.trim().is_empty() => {
            println!("  chain:       not saved (add --chain-out <file>)")
        }
        None => {}
    }
    if let Some(k) = &key_written {
        println!(
            "  private key: {} (mode 0600; it never left this host)",
            k.display()
        );
    }
    println!(
        "if the key leaks: castellanctl revoke {} --reason keyCompromise",
        issued.serial
    );
    Ok(())
}

// ----- certificates and revocation

fn print_cert(c: &CertView) {
    println!("certificate {} ({})", c.serial, c.state);
    println!("  subject:   {}", c.subject);
    if !c.sans.is_empty() {
        println!("  SANs:      {}", c.sans.join(", "));
    }
    println!("  identity:  {}", c.identity);
    println!("  issuer:    {}", c.issuer);
    println!("  profile:   {}", c.profile);
    println!("  validity:  {} to {}", c.not_before, c.not_after);
    if let Some(r) = &c.revocation {
        println!("  revoked:   {} ({})", r.revoked_at, r.reason);
        if let Some(d) = &r.invalidity_date {
            println!("  key suspect since: {d}");
        }
    }
    if c.state == "possibly-issued" {
        println!(
            "  castellan asked the signer but recorded no result (crash?); treat it as issued: \
             revoke it if in doubt"
        );
    }
    if let Some(o) = &c.ocsp {
        println!("  OCSP:      {o}");
    }
    if let Some(l) = &c.crl {
        println!("  CRL:       {l}");
    }
}

fn cert_cmd(ctx: &Ctx, command: CertCmd) -> Result<(), Failure> {
    match command {
        CertCmd::Show { serial, out } => {
            let c: CertView = ctx.get(&format!("/v1/certificates/{}", seg(&serial)))?;
            if let Some(out) = &out {
                let Some(pem_text) = &c.certificate_pem else {
                    return Err(refused(format!(
                        "castellan holds no certificate for serial {serial} ({}); nothing to write",
                        c.state
                    )));
                };
                write_out(out, pem_text)?;
            }
            if ctx.json {
                return print_json(&c);
            }
            print_cert(&c);
            if let Some(out) = &out {
                println!("  written to {}", out.display());
            }
            Ok(())
        }
        CertCmd::List {
            ca,
            status,
            identity,
            limit,
        } => {
            let list = fetch_pages(
                ctx,
                "/v1/certificates",
                &[("issuer", ca), ("state", status), ("identity", identity)],
                limit,
                "after",
                |p: CertPage| (p.certificates, p.next),
            )?;
            print_list(
                ctx,
                &list,
                "no certificates match",
                &[
                    "SERIAL",
                    "STATE",
                    "ISSUER",
                    "PROFILE",
                    "NOT AFTER",
                    "IDENTITY",
                ],
                |c: &CertView| {
                    vec![
                        c.serial.clone(),
                        c.state.clone(),
                        c.issuer.clone(),
                        c.profile.clone(),
                        c.not_after.clone(),
                        c.identity.clone(),
                    ]
                },
            )
        }
    }
}

fn revoke_cmd(
    ctx: &Ctx,
    serial: &str,
    reason: &str,
    invalidity_date: Option<String>,
) -> Result<(), Failure> {
    // "key compromise" as well as keyCompromise, key-compromise, KEY_COMPROMISE.
    let spaced: String = reason.split_whitespace().collect();
    let Some(r) = RevocationReason::parse(&spaced) else {
        // removeFromCRL belongs to delta CRLs: castellan refuses it.
        let names: Vec<&str> = RevocationReason::ALL
            .iter()
            .filter(|r| **r != RevocationReason::RemoveFromCrl)
            .map(|r| r.as_str())
            .collect();
        return Err(usage(format!(
            "unknown revocation reason {reason:?}; use one of: {}",
            names.join(", ")
        )));
    };
    let req = RevokeRequest {
        reason: r.as_str().to_string(),
        invalidity_date,
    };
    let c: CertView = ctx.post(&format!("/v1/certificates/{}/revoke", seg(serial)), &req)?;
    if ctx.json {
        return print_json(&c);
    }
    match &c.revocation {
        Some(rv) => println!(
            "revoked {} ({}) at {} (recorded durably in the event log)",
            c.serial, rv.reason, rv.revoked_at
        ),
        None => println!("revoked {} ({})", c.serial, r.as_str()),
    }
    println!("  subject: {}  issuer: {}", c.subject, c.issuer);
    if let Some(o) = &c.ocsp {
        println!("  OCSP now answers: {o}");
    }
    if c.crl.is_some() {
        println!(
            "  the next CRL of {} lists it (published within a second or two: castellanctl crl show --issuer {})",
            c.issuer, c.issuer
        );
    }
    println!(
        "  to see it in the log: castellanctl audit log --subject {}",
        c.serial
    );
    Ok(())
}

// ----- CRLs

/// `1h`, `30m`, `2h30m`, `90s`, `1d`, or plain seconds.
fn parse_duration_secs(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    digits.is_empty().then_some(total)
}

fn print_crl(c: &CrlView) {
    println!("CRL {} of {}", c.crl_number, c.issuer);
    println!("  thisUpdate:  {}", c.this_update);
    println!("  nextUpdate:  {}", c.next_update);
    println!("  revoked:     {}", c.entries);
    println!("  SHA-256:     {}", c.sha256);
    println!("  URL:         {}", c.url);
    if let Some(s) = c.emergency_validity_secs {
        println!(
            "  EMERGENCY MODE: every CRL valid {s} s; end with: castellanctl crl emergency --issuer {} --end",
            c.issuer
        );
    }
}

fn crl_cmd(ctx: &Ctx, command: CrlCmd) -> Result<(), Failure> {
    let (issuer, request) = match command {
        CrlCmd::Show { issuer } => {
            let c: CrlView = ctx.get(&format!("/v1/crls/{}", seg(&issuer)))?;
            if ctx.json {
                return print_json(&c);
            }
            print_crl(&c);
            return Ok(());
        }
        CrlCmd::Publish { issuer } => (issuer, PublishCrl::default()),
        CrlCmd::Emergency {
            issuer,
            next_update,
            end,
        } => {
            let secs = match next_update {
                None => None,
                Some(t) => Some(parse_duration_secs(&t).ok_or_else(|| {
                    usage(format!(
                        "--next-update {t:?}: use a duration such as 1h, 30m, 2h30m or 3600s"
                    ))
                })?),
            };
            (
                issuer,
                PublishCrl {
                    emergency_next_update_secs: secs,
                    end_emergency: end,
                },
            )
        }
    };
    let c: CrlView = ctx.post(&format!("/v1/crls/{}/publish", seg(&issuer)), &request)?;
    if ctx.json {
        return print_json(&c);
    }
    println!("published:");
    print_crl(&c);
    Ok(())
}

// ----- audit

/// `CertificateRevoked`, `certificate_revoked`, `Certificate Revoked` →
/// `certificate-revoked`.
fn kebab_case(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars() {
        if c == '_' || c.is_whitespace() || c == '-' {
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        } else if c.is_ascii_uppercase() {
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn audit_cmd(ctx: &Ctx, command: AuditCmd) -> Result<(), Failure> {
    match command {
        AuditCmd::Verify => {
            let v: VerifyView = ctx.get("/v1/audit/verify")?;
            let rolled_back = matches!(v.signer_checkpoint.as_str(), "log-behind" | "differs");
            let broken = !v.ok && !rolled_back
                || v.first_bad_sequence.is_some()
                || !v.checkpoints_bad.is_empty()
                || !v.foreign_audit_keys.is_empty();
            let ok = v.ok && !broken && !rolled_back;
            let keys_confirmed = v.checkpoint_keys == "signer";
            let compared = matches!(v.signer_checkpoint.as_str(), "matches" | "none");
            let confirmed = keys_confirmed && compared;
            if ctx.json {
                print_json(&v)?;
            } else if ok && !confirmed {
                let what = match (keys_confirmed, compared) {
                    (false, false) => {
                        "the checkpoint keys are NOT CONFIRMED and the log was NOT COMPARED with \
                         the signer's last checkpoint"
                    }
                    (false, true) => "the checkpoint keys are NOT CONFIRMED",
                    _ => "the log was NOT COMPARED with the signer's last checkpoint",
                };
                println!(
                    "audit chain intact: {} events, head {}; {} checkpoint(s) verified{} — but \
                     {what}",
                    v.events,
                    short(&v.head_hash, 16),
                    v.checkpoints_ok,
                    v.last_checkpoint
                        .map(|c| format!(", last at event {c}"))
                        .unwrap_or_default()
                );
                if !keys_confirmed {
                    println!(
                        "  {}",
                        v.checkpoint_keys_note.as_deref().unwrap_or(
                            "checkpoint signatures were checked only against the audit keys \
                             recorded in the log itself"
                        )
                    );
                }
                if !compared {
                    println!(
                        "  {}",
                        v.signer_checkpoint_note.as_deref().unwrap_or(
                            "whether the log was cut short or replaced by an older copy was not \
                             checked against the signer"
                        )
                    );
                }
            } else if ok {
                println!(
                    "audit chain OK: {} events, head {}; {} checkpoint(s) verified{}",
                    v.events,
                    short(&v.head_hash, 16),
                    v.checkpoints_ok,
                    v.last_checkpoint
                        .map(|c| format!(", last at event {c}"))
                        .unwrap_or_default()
                );
                if let Some(note) = &v.signer_checkpoint_note {
                    println!("  {note}");
                }
            } else {
                if broken {
                    println!("audit chain BROKEN");
                } else {
                    println!(
                        "audit log ROLLED BACK: the chain is intact, but it does not match the \
                         signer's last checkpoint"
                    );
                }
                if let Some(seq) = v.first_bad_sequence {
                    println!("  first bad event: {seq}");
                }
                if let Some(p) = &v.problem {
                    println!("  problem: {p}");
                }
                for (seq, why) in &v.checkpoints_bad {
                    println!("  bad checkpoint at event {seq}: {why}");
                }
                for (seq, why) in &v.foreign_audit_keys {
                    println!("  audit key at event {seq} is not the signer's: {why}");
                }
                if rolled_back {
                    println!(
                        "  {}",
                        v.signer_checkpoint_note
                            .as_deref()
                            .unwrap_or("the log does not match the signer's last checkpoint")
                    );
                }
                println!(
                    "  next: preserve the state directory as evidence before anything else \
                     writes to it, and compare with the last snapshot"
                );
            }
            if !ok {
                Err(Failure::Reported(ErrorKind::Refused))
            } else if !confirmed {
                Err(Failure::Reported(ErrorKind::Unavailable))
            } else {
                Ok(())
            }
        }
        AuditCmd::Log {
            actor,
            kind,
            since,
            until,
            subject,
            limit,
        } => {
            // Kinds are written like certificate-revoked; CertificateRevoked,
            // certificate_revoked or "certificate revoked" mean the same.
            let kind = kind.map(|k| kebab_case(&k));
            let no_match = if kind.is_some() {
                "no events match (event kinds are written like certificate-revoked or \
                 ceremony-approved: the KIND column of `castellanctl audit log` shows those \
                 in the log)"
            } else {
                "no events match"
            };
            // A serial as openssl prints it is looked up as the log writes it.
            let subject = subject.map(|s| {
                let t = s.trim();
                let openssl_form =
                    t.contains(':') || ["serial=", "0x", "0X"].iter().any(|p| t.starts_with(p));
                match castellan::api::parse_serial(t) {
                    Ok(octets) if openssl_form => hex::encode(octets),
                    _ => s,
                }
            });
            let list = fetch_pages(
                ctx,
                "/v1/audit/log",
                &[
                    ("actor", actor),
                    ("kind", kind),
                    ("since", since),
                    ("until", until),
                    ("subject", subject),
                ],
                limit,
                "from_seq",
                |p: EventPage| (p.events, p.next.map(|n| n.to_string())),
            )?;
            print_list(
                ctx,
                &list,
                no_match,
                &["SEQ", "TIME", "ACTOR", "KIND", "SUBJECTS"],
                |e: &EventView| {
                    vec![
                        e.seq.to_string(),
                        e.time.clone(),
                        e.actor.clone(),
                        e.kind.clone(),
                        e.subjects.join(" "),
                    ]
                },
            )
        }
        AuditCmd::Checkpoint => {
            let c: CheckpointView = ctx.post("/v1/audit/checkpoint", &serde_json::json!({}))?;
            if ctx.json {
                return print_json(&c);
            }
            println!(
                "checkpoint signed at event {} (head {}) at {}",
                c.sequence,
                short(&c.head_hash, 16),
                c.time
            );
            println!("  signature: {}", short(&c.signature, 32));
            Ok(())
        }
    }
}
