//! A ready-made node configuration for tests, examples and fuzz targets (feature `fixtures`):
//! one place that knows how to build a valid `AgentConfig`, instead of a copy per test.

use crate::agent::{AgentConfig, ConfigMode, NodeFacts};

/// Pico W facts with fixed identifiers.
pub const FACTS: NodeFacts<'static> = NodeFacts {
    operating_system: "none",
    architecture: "arm",
    instance_type: "raspberry-pi-pico-w",
    capacity: NodeFacts::PICO_W_CAPACITY,
    allocatable: NodeFacts::PICO_W_CAPACITY,
    machine_id: "e6614c311b4f6a2b",
    system_uuid: "e6614c31-1b4f-6a2b-0000-000000000000",
    boot_id: "0b5c8f0e-8a4f-4c1e-9a0e-2f5b9f3f7a10",
    kernel_version: "embassy-0.10",
    os_image: "picolet 0.1.0 (test)",
};

/// `pico-node-1` following `default/pico-config`, kubelet port 10250, a 5-minute status
/// interval and a 300 s watch timeout.
pub fn config(mode: ConfigMode) -> AgentConfig<'static> {
    AgentConfig {
        node_name: "pico-node-1",
        config_namespace: "default",
        config_map: "pico-config",
        api_host: "kubernetes",
        kubelet_port: 10250,
        status_report_interval_ms: crate::time::Duration::from_ms(300_000),
        config_mode: mode,
        watch_timeout_s: 300,
        facts: FACTS,
    }
}
