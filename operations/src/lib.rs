//! What people do to the pipeline's records, written once so that every face offering
//! it (`iotctl`, the console) does exactly the same thing: the same guarded update, the
//! same line in `system_events`, the same announcements on Kafka and in Redis.

pub mod alerts;
