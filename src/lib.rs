//! kiln: a build pool server speaking the sccache-dist build-server protocol.

pub mod archive;
pub mod client;
pub mod package;
pub mod protocol;
pub mod report;
