//! Any string: parsing a topic must return, never panic; and whatever parses must print
//! back as the same string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::Topic;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = core::str::from_utf8(bytes) {
        if let Ok(topic) = Topic::parse(text) {
            assert_eq!(topic.render().as_str(), text);
        }
    }
});
