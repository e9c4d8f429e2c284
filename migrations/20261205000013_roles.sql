-- Least privilege: what each kind of client may do, as two group roles (NOLOGIN) that a
-- deployment's login roles join. The role that runs the migrations owns the schema and
-- is the only one that may change it.
--
--   telemetry_ingester  the cloud ingester: reads the device registry, writes readings,
--                       coverage, hourly statistics, alerts, events and its partition
--                       leases; makes a day's partition through the function below.
--                       Never reads the gateway registry (secrets' hashes, frame keys).
--   telemetry_operator  iotctl and the console: reads everything but the gateway
--                       registry, registers devices and channels, acknowledges and
--                       closes alerts, records what it did in system_events.
--   telemetry_bridge    the bridge with the gateway registry: reads the gateways and
--                       who speaks for which device, nothing else.
--
-- Gateways, retention (dropping partitions, deleting readings) and migrations stay with
-- the owner. The roles are cluster-wide: a role that exists already (another database of
-- the cluster, or made by an administrator) is used as it is; creating one needs
-- CREATEROLE, which `scripts/stack.sh` and the compose stack's superuser have.

DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['telemetry_ingester', 'telemetry_operator', 'telemetry_bridge'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION
                -- Another database's migration made it a moment ago.
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role % does not exist and % may not create it', role_name, current_user
                        USING HINT = format('as a superuser: CREATE ROLE %I NOLOGIN; then run the migrations again', role_name);
            END;
        END IF;
    END LOOP;
END
$roles$;

GRANT SELECT ON devices, device_channels, sensor_readings, reading_coverage,
    device_stats_hourly, alerts, system_events, ingest_partitions, ingest_members
    TO telemetry_ingester;
GRANT INSERT ON sensor_readings, reading_coverage, device_stats_hourly, alerts,
    system_events, ingest_partitions, ingest_members
    TO telemetry_ingester;
GRANT UPDATE ON reading_coverage, device_stats_hourly, alerts, ingest_partitions,
    ingest_members
    TO telemetry_ingester;
GRANT DELETE ON ingest_members TO telemetry_ingester;

GRANT SELECT ON devices, device_channels, sensor_readings, reading_coverage,
    device_stats_hourly, alerts, system_events, ingest_partitions, ingest_members
    TO telemetry_operator;
GRANT INSERT, UPDATE ON devices, device_channels TO telemetry_operator;
GRANT UPDATE ON alerts TO telemetry_operator;
GRANT INSERT ON system_events TO telemetry_operator;

GRANT SELECT ON gateways, gateway_devices TO telemetry_bridge;

GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO telemetry_ingester, telemetry_operator;

-- The ingester makes a day's partition (CREATE TABLE, ATTACH PARTITION: the owner's
-- rights) through these functions, which run as their owner. The search path is pinned
-- to the schema of sensor_readings with pg_temp last, so a caller's temporary tables
-- cannot stand in for the real ones.
DO $definer$
DECLARE
    schema_name text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = 'sensor_readings'::regclass);
BEGIN
    EXECUTE format('ALTER FUNCTION ensure_sensor_readings_partition(date) SECURITY DEFINER SET search_path = %I, pg_temp', schema_name);
    EXECUTE format('ALTER FUNCTION ensure_sensor_readings_partitions(date, integer) SECURITY DEFINER SET search_path = %I, pg_temp', schema_name);
END
$definer$;
REVOKE EXECUTE ON FUNCTION ensure_sensor_readings_partition(date),
    ensure_sensor_readings_partitions(date, integer),
    drop_sensor_readings_partitions_before(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_sensor_readings_partitions(date, integer) TO telemetry_ingester;
