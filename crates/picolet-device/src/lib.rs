//! # picolet-device
//!
//! The parts of the Pico W firmware that are not Kubernetes but still need no hardware: what the
//! LED shows in each state, what the CYW43 firmware blob says about itself, and how deep the
//! stack has been, the TLS client setup, and the per-board settings record in flash. Kept apart from
//! `picolet-core` (the node agent) and from the firmware binaries (thin wiring), so that all of
//! it is tested on the host.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod board_config;
pub mod cyw43_blob;
pub mod keys;
pub mod led;
pub mod stack;
pub mod tls;
pub mod tls_server;
