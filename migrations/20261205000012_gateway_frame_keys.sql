-- Each gateway's frame key: the key its agent seals frames with (protocol/src/seal.rs),
-- derived from its secret when `iotctl` makes the secret, so that the bridge can tell
-- whether a frame for a device was sealed by the gateway that speaks for it. Unlike the
-- secret's hash this is the key itself: whoever reads it can seal frames for the
-- gateway's devices, but cannot connect as the gateway.
--
-- A rotation keeps the key before it, and when it was replaced: frames sealed with it
-- (an agent still connected with its old secret) are accepted for the bridge's
-- `embedded.rotation_grace` after `rotated_at`.
--
-- NULL: a gateway registered before this migration; its frames verify once its secret
-- is rotated.

ALTER TABLE gateways
    ADD COLUMN frame_key bytea
        CONSTRAINT frame_key_length CHECK (octet_length(frame_key) = 32),
    ADD COLUMN previous_frame_key bytea
        CONSTRAINT previous_frame_key_length CHECK (octet_length(previous_frame_key) = 32);
