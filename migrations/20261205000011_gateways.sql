-- The gateway registry: which boxes may connect to the plant's broker, with what secret,
-- and which devices each may speak for. `iotctl gateways …` manages it; the bridge's
-- embedded broker authenticates every connection against it.
--
-- A secret is 32 random bytes made by `iotctl`, never chosen by a person, so a plain
-- SHA-256 of it cannot be searched back (argon2 guards guessable passwords, and would
-- make a thousand gateways reconnecting at once cost tens of seconds of CPU). The secret
-- itself is shown once, when it is made, and stored nowhere here.
--
-- A device is spoken for by at most one gateway (the primary key of `gateway_devices`
-- is the device): assigning it to another gateway moves it.

CREATE TABLE gateways (
    gateway_id  text        PRIMARY KEY
        -- The naming rule of protocol/src/id.rs: the gateway id is its MQTT user name.
        CONSTRAINT gateway_id_valid CHECK (gateway_id ~ '^[A-Za-z0-9._-]{1,24}$'),
    secret_hash text        NOT NULL
        CONSTRAINT secret_hash_form CHECK (secret_hash ~ '^sha256:[0-9a-f]{64}$'),
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateway_devices (
    device_id  text PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    gateway_id text NOT NULL REFERENCES gateways (gateway_id) ON DELETE CASCADE
);

CREATE INDEX gateway_devices_by_gateway ON gateway_devices (gateway_id);
