//! castellan-signer: the only process that holds castellan's private keys.
//!
//! It speaks [`castellan_proto`] on a Unix socket to the daemon's uid only,
//! builds every DER structure it signs from structured requests, checks its
//! own policy and custodian quorum, and journals every signature before it
//! answers. After start-up it runs under a seccomp allowlist.
#![deny(unsafe_code)]

pub mod backend;
pub mod config;
pub mod der;
pub mod journal;
pub mod quorum;
pub mod server;
pub mod service;
pub mod state;
pub mod sys;
pub mod x509;
