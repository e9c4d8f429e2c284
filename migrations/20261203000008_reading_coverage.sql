-- Creates `reading_coverage`: for every device and boot, the sequence numbers whose
-- readings PostgreSQL holds, as ranges (a committed prefix, then whatever arrived above
-- a hole). It is what lets the pipeline say exactly which readings it holds and which
-- never arrived, and what the cloud confirms back to a device.
--
-- The ingester unites a batch's sequence numbers into `seqs` in the transaction that
-- inserts the batch, so the coverage never claims a reading that is not committed: once
-- that transaction commits, every reading of the batch is in sensor_readings (inserted
-- then, or by an earlier replay). It stays small: a boot sent without loss is one range.
-- Retention drops readings, not coverage: `seqs` says what was committed, not what is
-- still kept.

CREATE TABLE reading_coverage (
    device_id  text           NOT NULL,
    boot_id    bigint         NOT NULL,
    seqs       int8multirange NOT NULL,
    first_seen timestamptz    NOT NULL DEFAULT now(),
    updated_at timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, boot_id),
    CONSTRAINT reading_coverage_seqs_not_negative CHECK (lower(seqs) >= 0)
);
