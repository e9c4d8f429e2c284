//! The topics this agent publishes on, built once from the configuration through the
//! protocol crate's topic scheme (no topic is formatted by hand anywhere else).

use std::collections::HashMap;

use protocol::topic::{Topic, TopicKind};

use crate::config::AgentConfig;

pub struct Topics {
    prefix: String,
    site: String,
    gateway_line: String,
    gateway: String,
    device_lines: HashMap<String, String>,
}

impl Topics {
    /// The configuration was validated, so every segment is a valid name.
    pub fn new(config: &AgentConfig) -> Self {
        Self {
            prefix: config.gateway.topic_prefix.clone(),
            site: config.gateway.site.clone(),
            gateway_line: config.gateway.line.clone(),
            gateway: config.gateway.id.clone(),
            device_lines: config
                .devices
                .iter()
                .map(|d| (d.id.clone(), d.line(&config.gateway).to_owned()))
                .collect(),
        }
    }

    fn build(&self, line: &str, node: &str, kind: TopicKind) -> String {
        Topic::new(&self.prefix, &self.site, line, node, kind)
            .map(|t| t.to_string())
            // Unreachable after validation; a readable fallback beats a panic.
            .unwrap_or_else(|_| format!("{}/{}/{line}/{node}/{kind}", self.prefix, self.site))
    }

    fn device(&self, device: &str, kind: TopicKind) -> String {
        let line = self
            .device_lines
            .get(device)
            .map_or(self.gateway_line.as_str(), String::as_str);
        self.build(line, device, kind)
    }

    pub fn telemetry(&self, device: &str) -> String {
        self.device(device, TopicKind::Telemetry)
    }

    pub fn device_status(&self, device: &str) -> String {
        self.device(device, TopicKind::Status)
    }

    pub fn device_meta(&self, device: &str) -> String {
        self.device(device, TopicKind::Meta)
    }

    pub fn device_confirm(&self, device: &str) -> String {
        self.device(device, TopicKind::Confirm)
    }

    /// The gateway is a node of the tree too: its status carries health and the will.
    pub fn gateway_status(&self) -> String {
        self.build(&self.gateway_line, &self.gateway, TopicKind::Status)
    }
}
