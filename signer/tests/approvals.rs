//! A custodian approval names the signer it is for and the custodian set it
//! was made under: an approval made for another signer (an offline root and
//! an online signer usually share custodians) or under another set does not
//! count, even for the very same ceremony id and parameters.
//!
//! The check is the same for every key backend; it runs on the soft store.

#[allow(dead_code)] // the shared harness has more than these tests use
mod common;

use castellan_proto::{Algorithm, CeremonyContext, CeremonyOp, ErrorKind};
use common::{Backend, SignerProcess, root_params};

#[test]
fn approvals_for_another_signer_or_another_custodian_set_are_refused() {
    let mut s = SignerProcess::start(Backend::Soft);
    let real = s.custodians.context.expect("context learnt at start");
    let op = CeremonyOp::CreateRoot(root_params("root", Algorithm::EcdsaP256));

    let cases = [
        (
            "another signer",
            CeremonyContext {
                signer_id: [0x11; 32],
                ..real
            },
        ),
        (
            "another custodian set",
            CeremonyContext {
                custodians_sha256: [0x22; 32],
                ..real
            },
        ),
    ];
    for (what, ctx) in cases {
        s.custodians.context = Some(ctx);
        let e = s
            .ceremony(op.clone(), &[0, 2])
            .expect_err("a root made with approvals for another context");
        assert_eq!(e.kind, ErrorKind::QuorumInvalid, "{what}: {e:?}");
        assert!(
            e.message
                .contains("another signer or another custodian set"),
            "{what}: {e}"
        );
    }
    // The same custodians, approving for this signer and its set: accepted.
    s.custodians.context = Some(real);
    s.create_ca(op);
}

/// A caller that lost a ceremony's answer asks what it made: the same
/// outcome, after a restart too, only for the parameters executed; an id the
/// signer never executed is said to be so.
#[test]
fn an_executed_ceremony_outcome_can_be_asked_again_for_its_parameters_only() {
    use castellan_proto::{
        CeremonyOutcome, CeremonyOutcomeQuery, Request, Response, ceremony::statement_digest,
    };
    let mut s = SignerProcess::start(Backend::Soft);
    let op = CeremonyOp::CreateRoot(root_params("root", Algorithm::EcdsaP256));
    let id = common::ceremony_id();
    let proof = s.custodians.proof(id, &op, &[0, 1]);
    let made = match s.ceremony_with(op.clone(), proof) {
        Ok(CeremonyOutcome::Ca(info)) => info,
        other => panic!("root ceremony: {other:?}"),
    };
    let ask = |s: &mut SignerProcess, ceremony_id, parameters_sha256| {
        s.call(Request::CeremonyOutcome(CeremonyOutcomeQuery {
            ceremony_id,
            parameters_sha256,
        }))
    };
    for round in ["before a restart", "after a restart"] {
        match ask(&mut s, id, statement_digest(&op)) {
            Ok(Response::Ceremony(CeremonyOutcome::Ca(info))) => {
                assert_eq!(info, made, "{round}")
            }
            other => panic!("{round}: {other:?}"),
        }
        s.restart();
    }
    let other_op = CeremonyOp::CreateRoot(root_params("root-b", Algorithm::EcdsaP256));
    let e = ask(&mut s, id, statement_digest(&other_op)).expect_err("other parameters");
    assert_eq!(e.kind, ErrorKind::Policy, "{e:?}");
    assert!(e.message.contains("other parameters"), "{e}");
    let e = ask(&mut s, common::ceremony_id(), statement_digest(&op)).expect_err("unknown id");
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    assert!(e.message.contains("has not executed"), "{e}");
}
