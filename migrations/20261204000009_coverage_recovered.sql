-- Adds `reading_coverage.recovered`: how many of a boot's readings arrived after a
-- higher one was already committed, that is, filled a hole (a frame the agent sent
-- again because no confirmation covered it, or one that overtook another on a
-- reconnect). With the holes still open it lets `iotctl completeness` say, per boot,
-- how much retransmission recovered and how much is still missing.
--
-- The ingester adds to it in the statement that unites a batch into `seqs`, from the
-- same ranges, so it counts each reading once: a replay of what is held adds nothing.

ALTER TABLE reading_coverage
    ADD COLUMN recovered bigint NOT NULL DEFAULT 0
        CONSTRAINT reading_coverage_recovered_not_negative CHECK (recovered >= 0);
