#![no_std]
#![forbid(unsafe_code)]
pub mod agent;
pub mod backoff;
pub mod http;
pub mod kubelet;
pub mod lines;
pub mod memory;
pub mod metrics;
pub mod objects;
pub mod time;
pub mod write;
