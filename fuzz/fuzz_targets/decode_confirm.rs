//! Any bytes: decoding a confirmation must return, never panic; and whatever decodes
//! must re-encode to bytes that decode to the same confirmation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Confirmation, MAX_CONFIRM_LEN};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(confirmation) = Confirmation::decode(bytes) {
        let mut buf = [0u8; MAX_CONFIRM_LEN];
        let encoded = confirmation
            .encode(&mut buf)
            .expect("a decoded confirmation is valid")
            .to_vec();
        let again = Confirmation::decode(&encoded).expect("an encoded confirmation decodes");
        assert_eq!(again, confirmation);
    }
});
