//! The admin commands: what an administrator runs, with an admin kubeconfig, to give boards
//! their identities and settings. None of this runs on a node.
//!
//! - [`enrol`]: `picolet enrol`, a node identity through the CSR API (key, CSR, approval, RBAC);
//! - [`token`]: `picolet token`, a short-lived bootstrap token instead (the node makes its key);
//! - [`approve`]: `picolet approve`, checked approval of nodes' kubelet-serving CSRs;
//! - [`board_config`]: `picolet board-config`, one board's settings as a UF2 ([`uf2`]);
//! - [`kubeconfig`]: finds and reads the admin kubeconfig as kubectl does.
//!
//! What they write for a node is [`crate::credentials`], which the node side reads.

pub mod approve;
pub mod board_config;
pub mod enrol;
pub mod kubeconfig;
pub mod token;
pub mod uf2;
