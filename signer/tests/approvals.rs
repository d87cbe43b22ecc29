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
