//! The deliveries this replica is sending now: its own claims, which a
//! redelivered copy of their message must not take back while in flight.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use crate::store::deliveries::Key;

#[derive(Debug, Default)]
pub(super) struct Sending(Mutex<HashSet<Key>>);

impl Sending {
    fn lock(&self) -> MutexGuard<'_, HashSet<Key>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves for one task, until the guard is dropped, each item whose
    /// delivery no other task of this replica has reserved; returns the
    /// guard, the reserved and the others. Reserved before the claim, so two
    /// copies of one event in two batches never both take this replica's
    /// own claim.
    pub(super) fn reserve<T>(
        &self,
        items: Vec<T>,
        key_of: impl Fn(&T) -> Key,
    ) -> (SendingGuard<'_>, Vec<T>, Vec<T>) {
        let mut sending = self.lock();
        let mut keys = Vec::new();
        let (reserved, held): (Vec<T>, Vec<T>) = items.into_iter().partition(|item| {
            let key = key_of(item);
            let free = sending.insert(key.clone());
            if free {
                keys.push(key);
            }
            free
        });
        drop(sending);
        (
            SendingGuard {
                sending: self,
                keys,
            },
            reserved,
            held,
        )
    }
}

/// Releases its deliveries when dropped, however the sending ended.
#[derive(Debug)]
pub(super) struct SendingGuard<'a> {
    sending: &'a Sending,
    keys: Vec<Key>,
}

impl Drop for SendingGuard<'_> {
    fn drop(&mut self) {
        let mut sending = self.sending.lock();
        for key in &self.keys {
            sending.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key {
            event_source: "/tests".into(),
            event_id: format!("e{n}"),
            subscription_id: uuid::Uuid::from_bytes([n; 16]),
        }
    }

    #[test]
    fn a_delivery_is_reserved_by_one_task_at_a_time() {
        let sending = Sending::default();
        let (first, reserved, held) = sending.reserve(vec![1u8, 2], |n| key(*n));
        assert_eq!((reserved, held), (vec![1, 2], vec![]));
        let (_second, reserved, held) = sending.reserve(vec![2u8, 3], |n| key(*n));
        assert_eq!((reserved, held), (vec![3], vec![2]));
        drop(first);
        let (_third, reserved, _) = sending.reserve(vec![1u8, 2], |n| key(*n));
        assert_eq!(reserved, vec![1, 2]);
    }
}
