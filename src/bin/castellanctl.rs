//! castellanctl: the admin CLI.
//!
//! This release drives a signer directly (`castellanctl signer …`): the
//! path of the offline root host, where ceremonies travel as files between
//! custodians. Exit codes: 0 ok, 1 refused or failed (the message says
//! why), 2 usage, 69 signer unavailable.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use castellan::custodian::{CustodianKey, read_passphrase};
use castellan::signer_client::{ClientError, SignerClient};
use castellan::{csr, pem};
use castellan_proto::{
    Algorithm, Approval, CaParams, CeremonyId, CeremonyOp, CeremonyOutcome, CertificateTemplate,
    Custodian, CustodianSet, DistinguishedName, NameAttribute, Purpose, QuorumProof, Request,
    Response, Urls, Validity, statement_digest,
};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "castellanctl", version, about = "Administer castellan")]
struct Cli {
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Custodian approval keys.
    Custodian {
        #[command(subcommand)]
        command: CustodianCmd,
    },
    /// Talk to a castellan-signer directly (offline root host, bootstrap).
    Signer {
        /// The signer's socket.
        #[arg(
            long,
            global = true,
            default_value = "/run/castellan-signer/signer.sock"
        )]
        socket: PathBuf,
        #[command(subcommand)]
        command: SignerCmd,
    },
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
        command: CeremonyCmd,
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
}

#[derive(Subcommand)]
enum CeremonyCmd {
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
    op: CeremonyOp,
    approvals: Vec<FileApproval>,
}

#[derive(Serialize, Deserialize)]
struct FileApproval {
    name: String,
    custodian: String,
    signature: String,
}

enum Failure {
    Usage(String),
    Refused(String),
    Unavailable(String),
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Refused(m)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unavailable(_) => Failure::Unavailable(e.to_string()),
            _ => Failure::Refused(e.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (code, msg) = match f {
                Failure::Usage(m) => (2, m),
                Failure::Refused(m) => (1, m),
                Failure::Unavailable(m) => (EXIT_UNAVAILABLE, m),
            };
            if json {
                println!("{}", serde_json::json!({ "error": msg }));
            } else {
                eprintln!("castellanctl: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Custodian {
            command:
                CustodianCmd::Keygen {
                    name,
                    out,
                    passphrase_file,
                },
        } => {
            let pass = read_passphrase(&passphrase_file)?;
            let key = CustodianKey::generate(&name, &out, &pass)?;
            let pk = hex::encode(key.public_key());
            if cli.json {
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
        Command::Signer { socket, command } => signer_cmd(&socket, command, cli.json),
    }
}

fn parse_subject(s: &str) -> Result<DistinguishedName, Failure> {
    let mut attrs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            Failure::Usage(format!(
                "subject part {part:?} is not KEY=VALUE (e.g. CN=Example Root CA,O=Example)"
            ))
        })?;
        let v = v.trim().to_string();
        attrs.push(match k.trim().to_ascii_uppercase().as_str() {
            "CN" => NameAttribute::CommonName(v),
            "O" => NameAttribute::Organization(v),
            "OU" => NameAttribute::OrganizationalUnit(v),
            "C" => NameAttribute::Country(v),
            "L" => NameAttribute::Locality(v),
            "ST" => NameAttribute::State(v),
            "SERIALNUMBER" => NameAttribute::SerialNumber(v),
            "DC" => NameAttribute::DomainComponent(v),
            other => return Err(Failure::Usage(format!("subject attribute {other:?} is not supported; use CN, O, OU, C, L, ST, serialNumber, DC"))),
        });
    }
    if attrs.is_empty() {
        return Err(Failure::Usage(
            "the subject is empty; e.g. --subject \"CN=Example Root CA,O=Example\"".into(),
        ));
    }
    Ok(DistinguishedName(attrs))
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
    if file.format != "castellan-ceremony-v1" {
        return Err(Failure::Refused(format!(
            "{} has unknown format {:?}",
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
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))
}

fn write_out(path: &Path, content: &str) -> Result<(), Failure> {
    std::fs::write(path, content)
        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))
}

fn describe(op: &CeremonyOp) -> String {
    match op {
        CeremonyOp::CreateRoot(p) | CeremonyOp::CreateIntermediate(p) => format!(
            "create CA {:?} ({}, parent {}, {} days, pathLen {:?}) subject {:?}",
            p.ca_id,
            p.algorithm.as_str(),
            p.parent.as_deref().unwrap_or("none: self-signed root"),
            (p.validity.not_after - p.validity.not_before) / 86_400,
            p.path_len,
            p.subject.0
        ),
        CeremonyOp::Rotate(r) => {
            format!("rotate CA {:?} to a new key as {:?}", r.ca_id, r.new_ca_id)
        }
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

fn signer_cmd(socket: &Path, command: SignerCmd, json: bool) -> Result<(), Failure> {
    match command {
        SignerCmd::Status => {
            let mut c = SignerClient::connect(socket)?;
            let Response::Status(s) = c.call(Request::Status)? else {
                return Err(Failure::Refused("unexpected answer".into()));
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
                return Err(Failure::Refused("unexpected answer".into()));
            };
            let info = k
                .cas
                .iter()
                .find(|i| i.ca_id == ca)
                .ok_or_else(|| format!("the signer holds no CA {ca:?}"))?;
            write_out(&out, &pem::encode("CERTIFICATE", &info.certificate_der))
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
                    not_after: nb + 60 + i64::from(days) * 86_400 - 1,
                },
                ca: false,
                urls: Urls::default(),
            };
            let mut c = SignerClient::connect(socket)?;
            let Response::Certificate(cert) = c.call(Request::IssueCertificate(template))? else {
                return Err(Failure::Refused("unexpected answer".into()));
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
    }
}

fn ceremony_cmd(socket: &Path, command: CeremonyCmd, json: bool) -> Result<(), Failure> {
    match command {
        CeremonyCmd::New {
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
                Failure::Usage(format!(
                    "unknown purpose {purpose:?}; use root, intermediate or custodians"
                ))
            })?;
            let op = match purpose {
                Purpose::Root | Purpose::Intermediate => {
                    let algorithm = Algorithm::parse(&algorithm)
                        .ok_or_else(|| Failure::Usage(format!("unknown algorithm {algorithm:?}; use ecdsa-p256, ecdsa-p384 or rsa-3072")))?;
                    // Backdated an hour: certificates issued right after the
                    // ceremony must fit inside the CA's validity.
                    let nb = now() - 3600;
                    let params = CaParams {
                        ca_id: ca_id.ok_or_else(|| Failure::Usage("--ca-id is required".into()))?,
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
                            return Err(Failure::Usage(
                                "a root has no --parent; did you mean --purpose intermediate?"
                                    .into(),
                            ));
                        }
                        CeremonyOp::CreateRoot(params)
                    } else {
                        if parent.is_none() {
                            return Err(Failure::Usage(
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
                            Failure::Usage(format!(
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
                            .ok_or_else(|| Failure::Usage("--threshold is required".into()))?,
                        custodians,
                    })
                }
                Purpose::Rotate | Purpose::CrossSign => {
                    return Err(Failure::Usage(format!(
                        "purpose {} is not offered by `signer ceremony new` in this release",
                        purpose.as_str()
                    )));
                }
            };
            let mut id = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| "no randomness for a ceremony id".to_string())?;
            let file = CeremonyFile {
                format: "castellan-ceremony-v1".into(),
                ceremony_id: hex::encode(id),
                op,
                approvals: vec![],
            };
            if out.exists() {
                return Err(Failure::Refused(format!(
                    "{} exists already",
                    out.display()
                )));
            }
            write_ceremony(&out, &file)?;
            println!(
                "ceremony {} ({}) written to {}",
                file.ceremony_id,
                describe(&file.op),
                out.display()
            );
            Ok(())
        }
        CeremonyCmd::Show { file } => {
            let (id, f) = read_ceremony(&file)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ceremony_id": f.ceremony_id, "purpose": f.op.purpose().as_str(),
                    "parameters_sha256": hex::encode(statement_digest(&f.op)),
                    "approvals": f.approvals.iter().map(|a| serde_json::json!({"name": a.name, "custodian": a.custodian})).collect::<Vec<_>>()})
                );
            } else {
                println!("ceremony {}: {}", hex::encode(id), describe(&f.op));
                println!(
                    "  parameters sha256: {}",
                    hex::encode(statement_digest(&f.op))
                );
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
        CeremonyCmd::Approve {
            file,
            key,
            passphrase_file,
        } => {
            let (id, mut f) = read_ceremony(&file)?;
            let pass = read_passphrase(&passphrase_file)?;
            let k = CustodianKey::load(&key, &pass)?;
            let a = k.approve(&id, &f.op);
            let pk = hex::encode(a.custodian);
            // One approval per custodian: approving again replaces, never adds.
            f.approvals.retain(|x| x.custodian != pk);
            f.approvals.push(FileApproval {
                name: k.name.clone(),
                custodian: pk,
                signature: hex::encode(&a.signature),
            });
            write_ceremony(&file, &f)?;
            println!(
                "{} approved ceremony {}: {}",
                k.name,
                hex::encode(id),
                describe(&f.op)
            );
            Ok(())
        }
        CeremonyCmd::Execute { file, out } => {
            let (id, f) = read_ceremony(&file)?;
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
                return Err(Failure::Refused("unexpected answer".into()));
            };
            let der = match &outcome {
                CeremonyOutcome::Ca(info) => {
                    println!(
                        "ceremony {} executed: CA {:?} created",
                        hex::encode(id),
                        info.ca_id
                    );
                    Some(info.certificate_der.clone())
                }
                CeremonyOutcome::CrossCertificate(c) => {
                    println!(
                        "ceremony {} executed: cross-certificate {}",
                        hex::encode(id),
                        hex::encode(&c.serial)
                    );
                    Some(c.der.clone())
                }
                CeremonyOutcome::Custodians(s) => {
                    println!(
                        "ceremony {} executed: custodian set is now {} of {}",
                        hex::encode(id),
                        s.threshold,
                        s.custodians.len()
                    );
                    None
                }
            };
            if let (Some(out), Some(der)) = (out, der) {
                write_out(&out, &pem::encode("CERTIFICATE", &der))?;
            }
            Ok(())
        }
    }
}
