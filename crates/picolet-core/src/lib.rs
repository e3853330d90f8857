//! # picolet-core
//!
//! Everything a picolet node knows about Kubernetes, with no I/O, no heap and no clock of its
//! own: the same code runs on a Raspberry Pi Pico W (`thumbv6m-none-eabi`) and in the `picolet`
//! host agent.
//!
//! **What it is:** a kubelet for a node that runs no containers. It registers the Node, renews
//! its Lease, reports status, follows one ConfigMap into a 1 KB memory region, fails pods bound
//! to it, and renders the kubelet endpoints.
//!
//! **What it is not:** a network stack, a TLS implementation or a Kubernetes client library.
//! The platform owns sockets, TLS, time and buffers; the core says which bytes to send and
//! what the bytes that came back mean.
//!
//! **Where to start:** [`agent::Agent`]. A platform drives it in a loop:
//! 1. [`agent::Agent::poll_request`] writes the next API request into a buffer (or says when to
//!    ask again, [`agent::Agent::next_wakeup`]);
//! 2. the platform sends it and feeds the response to [`agent::Agent::on_response`];
//! 3. on a second connection, [`agent::Agent::poll_watch_request`] and
//!    [`agent::Agent::on_watch_bytes`] follow the ConfigMap;
//! 5. [`kubelet::parse_request`] and [`kubelet::respond`] serve the kubelet port.
//!
//! 4. on a third connection, where the platform has one, [`agent::Agent::poll_pod_watch_request`]
//!    and [`agent::Agent::on_pod_watch_bytes`] watch the pods bound to the node.
//!
//! The layers, bottom up: [`write`] (formatting into fixed buffers), [`time`] (instants, durations
//! and Unix times; the wall clock from `Date` headers or SNTP), [`backoff`], [`http`] (HTTP/1.1 on httparse), [`lines`] (bounded
//! watch-line framing), [`json_string`] (JSON escapes), [`objects`] (the Kubernetes objects,
//! serde-json-core), [`paths`] (every API path the node requests), [`csr`] (the CSR wire code the agent
//! and [`join`] share), [`memory`] (the region and
//! the `memory_values` grammar), [`metrics`], [`kubelet`], and [`agent`].

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod csr;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod http;
pub mod join;
pub mod json_string;
pub mod kubelet;
pub mod lines;
pub mod memory;
pub mod metrics;
pub mod objects;
pub mod paths;
pub mod pki;
pub mod time;
pub mod write;
