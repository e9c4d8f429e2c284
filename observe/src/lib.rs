//! What the pipeline says of itself, read the one way that `iotctl watch` and the
//! console both show it: the agents' health on their retained MQTT `status` topics
//! (`agents`), and the bridge's and the ingester's counters on their `/metrics`
//! (`metrics`). Fetching `/metrics` is each face's own business (its HTTP client);
//! reading what came back is shared.

pub mod agents;
pub mod metrics;
