//! kiln: a build pool server speaking the sccache-dist build-server protocol.

pub mod archive;
pub mod client;
pub mod config;
pub mod host_check;
pub mod package;
pub mod protocol;
pub mod report;
pub mod sandbox;
