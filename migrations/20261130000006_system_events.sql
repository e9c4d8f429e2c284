-- Creates `system_events`, the operation log of the pipeline: starts and stops,
-- consumer-group rebalances, dead-letter bursts, Redis gaps, errors. Written by every
-- service and by the stack scripts, read by people (psql, Grafana) when something went
-- wrong. Low volume; details carries whatever structured context the event has.
--
-- `service` is checked for format, not against a list (edge-agent, bridge,
-- cloud-ingester, iotctl, stack today): this is the log of last resort, and a new
-- component, or an old binary against a newer schema, must never lose an event to a
-- CHECK. `level` is a closed set because readers filter on it.

CREATE TABLE system_events (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    -- Which program: edge-agent, bridge, cloud-ingester, iotctl, stack, ...
    service  text        NOT NULL
             CONSTRAINT system_events_service_format CHECK (service ~ '^[a-z][a-z0-9_-]{0,31}$'),
    -- Which copy of it (host name, pod, consumer member id), when there are several.
    instance text,
    level    text        NOT NULL
             CONSTRAINT system_events_level_known CHECK (level IN ('info', 'warning', 'error')),
    -- What happened: start, stop, rebalance, dlq_burst, error, redis_gap, ...
    kind     text        NOT NULL
             CONSTRAINT system_events_kind_format CHECK (kind ~ '^[a-z][a-z0-9_]{0,63}$'),
    message  text        NOT NULL DEFAULT '',
    details  jsonb       NOT NULL DEFAULT '{}'
             CONSTRAINT system_events_details_object CHECK (jsonb_typeof(details) = 'object')
);

-- "What happened lately" and "what did this service do lately".
CREATE INDEX system_events_at ON system_events (at DESC);
CREATE INDEX system_events_service_at ON system_events (service, at DESC);
