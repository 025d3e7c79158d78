//! The system calls a job may not make, one policy for every backend.
//!
//! [`policy`] says what is denied, with which errno and on which arguments, and
//! names the calls a job keeps (`allowed_syscalls.txt`, checked against the running
//! kernel by a test). Each backend renders it in its own form: the overlay backend
//! compiles it with libseccomp for bubblewrap, the docker backend writes it as a
//! Docker seccomp profile. Neither holds a list of its own, so the two cannot drift.

pub mod policy;

#[cfg(test)]
pub(crate) mod cbpf;

pub use policy::{allowed, number, Denial, When, DENIALS};
