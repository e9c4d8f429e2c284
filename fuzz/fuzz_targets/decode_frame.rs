//! Any bytes: decoding and checking a seal must return, never panic; and whatever
//! decodes must re-encode to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{seal, Frame, FrameKey, MAX_FRAME_LEN};

fuzz_target!(|bytes: &[u8]| {
    assert!(
        seal::verify(bytes, &FrameKey::derive(b"fuzz")).is_err(),
        "a forged tag verified"
    );
    if let Ok(frame) = Frame::decode(bytes) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let encoded = frame.encode(&mut buf).expect("a decoded frame is valid").to_vec();
        let again = Frame::decode(&encoded).expect("an encoded frame decodes");
        let mut buf2 = [0u8; MAX_FRAME_LEN];
        assert_eq!(again.encode(&mut buf2).expect("valid"), &encoded[..]);
    }
});
