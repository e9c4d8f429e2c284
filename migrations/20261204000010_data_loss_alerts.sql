-- Admits `data_loss` into `alerts`: a device-level alert that opens when readings of a
-- device are missing from PostgreSQL (holes below its highest committed sequence number,
-- from `reading_coverage`) for longer than the ingester's window, and resolves when a
-- resend fills them. It concerns the device, not one of its channels: a frame carries
-- readings of every channel, so a lost frame is a loss of the device.
--
-- So `channel_id` becomes nullable, for that rule only (CHECK below: NULL if and only if
-- the rule is `data_loss`; the channel rules keep their channel). The channel foreign key
-- does not check a row whose channel_id is NULL (MATCH SIMPLE), so a device foreign key
-- is added beside it: a device-level alert still names a registered device, and goes
-- with it when the device is deleted, as channel alerts go with their channel.
--
-- The partial unique index of one unresolved alert per (device, channel, rule) is made
-- again with NULLS NOT DISTINCT (PostgreSQL 15), so a NULL channel counts as one value:
-- at most one unresolved `data_loss` per device. Its columns and predicate are the same,
-- so the writers' arbiter clause is unchanged:
--   INSERT ... ON CONFLICT (device_id, channel_id, rule) WHERE state <> 'resolved' DO ...
-- Statements that look up an unresolved alert by its key compare the channel with
-- `IS NOT DISTINCT FROM`; the index still serves them by its device_id prefix.
--
-- For a `data_loss` alert, `value` is the number of readings missing when it opened (or
-- when the engine resolved it, in `resolved_value`), `threshold` the configured number
-- that opens it, `value_ts` when the ingester saw the loss last pass the threshold.

ALTER TABLE alerts
    DROP CONSTRAINT alerts_rule_known,
    ADD CONSTRAINT alerts_rule_known
        CHECK (rule IN ('high', 'low', 'stuck', 'dropout', 'data_loss')),
    ALTER COLUMN channel_id DROP NOT NULL,
    -- Device-level rules have no channel, channel rules always have one.
    ADD CONSTRAINT alerts_channel_iff_channel_rule
        CHECK ((channel_id IS NULL) = (rule = 'data_loss')),
    ADD CONSTRAINT alerts_device_fk FOREIGN KEY (device_id)
        REFERENCES devices (device_id) ON DELETE CASCADE;

DROP INDEX alerts_one_unresolved;
CREATE UNIQUE INDEX alerts_one_unresolved
    ON alerts (device_id, channel_id, rule) NULLS NOT DISTINCT WHERE state <> 'resolved';
