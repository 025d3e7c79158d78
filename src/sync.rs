//! The one policy for kiln's few `Mutex`es (never held across an await): a
//! poisoned lock is recovered, not propagated. Each guards a few map operations
//! that leave it consistent, and one panicked task must not take the server down
//! with it.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering it if a panic poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
