//! Sealed frames: what the key's holder seals decodes as the same frame and verifies;
//! anything else (another key, a changed byte, a cut, an unsealed frame) does not.

use proptest::prelude::*;
use protocol::seal::{self, FrameKey, SealError, MAX_SEALED_LEN, SEALED_VERSION, TAG_LEN};
use protocol::{Frame, MAX_FRAME_LEN};

#[path = "support/seed_frames.rs"]
mod seed_frames;

fn v1(count: usize) -> Vec<u8> {
    let (device, channels) = seed_frames::SEED_DEVICES[0];
    let mut buf = [0u8; MAX_FRAME_LEN];
    seed_frames::seed_frame(device, channels, count)
        .encode(&mut buf)
        .unwrap()
        .to_vec()
}

fn sealed(frame: &[u8], key: &FrameKey) -> Vec<u8> {
    let mut out = [0u8; MAX_SEALED_LEN];
    seal::seal(frame, key, &mut out).unwrap().to_vec()
}

#[test]
fn a_sealed_frame_decodes_as_the_same_frame_and_verifies_under_its_key_only() {
    let key = FrameKey::derive(b"0123abcd");
    let frame = v1(50);
    let sealed = sealed(&frame, &key);
    assert_eq!(sealed.len(), frame.len() + TAG_LEN);
    assert_eq!(sealed[0], SEALED_VERSION);
    assert_eq!(
        Frame::decode(&sealed).unwrap(),
        Frame::decode(&frame).unwrap()
    );
    assert_eq!(seal::verify(&sealed, &key), Ok(()));
    assert_eq!(
        seal::verify(&sealed, &FrameKey::derive(b"0123abce")),
        Err(SealError::WrongTag)
    );
    assert_eq!(seal::verify(&frame, &key), Err(SealError::Unsealed(1)));
    assert!(seal::is_sealed(&sealed) && !seal::is_sealed(&frame));
}

#[test]
fn every_changed_byte_and_every_cut_is_caught() {
    let key = FrameKey::derive(b"secret");
    let sealed = sealed(&v1(10), &key);
    for at in 1..sealed.len() {
        let mut changed = sealed.clone();
        changed[at] ^= 0x01;
        assert_eq!(
            seal::verify(&changed, &key),
            Err(SealError::WrongTag),
            "byte {at}"
        );
    }
    for len in 0..sealed.len() {
        assert!(seal::verify(&sealed[..len], &key).is_err(), "cut at {len}");
    }
}

#[test]
fn only_a_version_1_frame_is_sealed_and_the_buffer_is_checked() {
    let key = FrameKey::derive(b"secret");
    let frame = v1(5);
    let twice = sealed(&frame, &key);
    let mut out = [0u8; MAX_SEALED_LEN];
    assert_eq!(
        seal::seal(&twice, &key, &mut out),
        Err(SealError::NotVersion1(2))
    );
    assert_eq!(seal::seal(&[], &key, &mut out), Err(SealError::Truncated));
    let mut small = vec![0u8; frame.len() + TAG_LEN - 1];
    assert_eq!(
        seal::seal(&frame, &key, &mut small),
        Err(SealError::BufferTooSmall)
    );
}

#[test]
fn keys_are_derived_from_the_secret_and_never_printed() {
    let key = FrameKey::derive(b"secret");
    assert_eq!(key, FrameKey::derive(b"secret"));
    assert_ne!(key, FrameKey::derive(b"secreT"));
    assert_eq!(FrameKey::from_bytes(*key.as_bytes()), key);
    assert_eq!(format!("{key:?}"), "FrameKey(***)");
}

/// The size bar holds with the tag for every seed device: at most 8 bytes a reading in
/// a frame of 50. (Under the longest id allowed, 24 characters, the furnace's channel
/// takes 7.90 B unsealed and 8.06 B sealed: the one case the tag puts over.)
#[test]
fn fifty_sealed_readings_of_a_seed_device_cost_at_most_8_bytes_each() {
    let key = FrameKey::derive(b"secret");
    for &(device, channels) in seed_frames::SEED_DEVICES.iter() {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let frame = seed_frames::seed_frame(device, channels, 50);
        let sealed = sealed(frame.encode(&mut buf).unwrap(), &key);
        let per_reading = sealed.len() as f64 / 50.0;
        assert!(per_reading <= 8.0, "{device}: {per_reading} B/reading");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_never_verify(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let key = FrameKey::derive(b"secret");
        let _ = Frame::decode(&bytes);
        prop_assert!(seal::verify(&bytes, &key).is_err());
        let mut out = [0u8; MAX_SEALED_LEN];
        let _ = seal::seal(&bytes, &key, &mut out);
    }
}
