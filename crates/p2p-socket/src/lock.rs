//! Locks that survive a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// Locks `m` even if a task panicked while holding it: every critical section in the engine
/// leaves its data consistent between statements, so the data is still good, and one failed
/// connection must not take the others down with a poisoned lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
