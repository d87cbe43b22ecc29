//! Decodes untrusted octets as a whole frame and as a bare payload, for both
//! directions. Whatever decodes must re-encode and decode to the same value:
//! a frame the signer accepts means exactly one thing.
#![no_main]

use castellan_proto::frame::decode_payload;
use castellan_proto::{RequestFrame, ResponseFrame, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn stable<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
    let again = encode_frame(&v).expect("a decoded frame re-encodes");
    let back: T = decode_frame(&again).expect("a re-encoded frame decodes");
    assert_eq!(back, v, "re-encoding changed the value");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = decode_frame::<RequestFrame>(data) {
        stable(f);
    }
    if let Ok(f) = decode_frame::<ResponseFrame>(data) {
        stable(f);
    }
    // Without the header, so that mutations reach postcard directly.
    if let Ok(f) = decode_payload::<RequestFrame>(data) {
        stable(f);
    }
    if let Ok(f) = decode_payload::<ResponseFrame>(data) {
        stable(f);
    }
});
