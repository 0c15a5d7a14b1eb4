//! Acks for one consuming channel: a batch whose messages all came after
//! everything already settled is acked with one `multiple` ack (one frame,
//! one settle in the quorum queue), any other message on its own.
//!
//! A `multiple` ack for tag T settles every unsettled message up to T, so it
//! is sent only when no earlier message is still being handled, and acks go
//! out in the order they were decided. A message still being handled never
//! holds up the acks of others: they are sent on their own.

use std::collections::BTreeSet;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::Mutex;

/// How one message of a batch was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Handled: it is to be acked.
    AckWanted,
    /// Nacked already (handed back to its queue), or the channel failed.
    Otherwise,
}

/// The acks to send for one batch, decided from what is still unsettled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckPlan {
    /// One ack with `multiple` for the batch's last tag.
    Multiple(u64),
    /// One ack each.
    Each(Vec<u64>),
}

/// Decides a batch's acks. `unsettled`: the channel's messages not yet
/// settled, the batch's among them. A `multiple` ack needs every message of
/// the batch wanting an ack or already nacked, and none older unsettled.
pub fn plan(unsettled: &BTreeSet<u64>, batch: &[(u64, Settled)], failed: bool) -> AckPlan {
    let wanted: Vec<u64> = batch
        .iter()
        .filter(|(_, settled)| *settled == Settled::AckWanted)
        .map(|(tag, _)| *tag)
        .collect();
    let first = batch.iter().map(|(tag, _)| *tag).min();
    let last = wanted.iter().copied().max();
    match (first, last) {
        (Some(first), Some(last))
            if !failed && wanted.len() > 1 && unsettled.range(..first).next().is_none() =>
        {
            AckPlan::Multiple(last)
        }
        _ => AckPlan::Each(wanted),
    }
}

/// The unsettled messages of one consuming channel.
#[derive(Debug)]
pub struct Acks {
    channel: Channel,
    unsettled: Mutex<BTreeSet<u64>>,
}

impl Acks {
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            unsettled: Mutex::new(BTreeSet::new()),
        }
    }

    /// Notes a batch's messages as they arrive, before anything settles them.
    pub async fn received(&self, tags: impl IntoIterator<Item = u64>) {
        self.unsettled.lock().await.extend(tags);
    }

    /// Sends a batch's acks once every message in it is settled (nacks
    /// already sent). `failed`: a nack or an ack of the batch could not be
    /// sent, so nothing is assumed settled by a `multiple`.
    pub async fn settle_batch(
        &self,
        batch: &[(u64, Settled)],
        failed: bool,
    ) -> Result<(), lapin::Error> {
        // Held while the acks are sent: a later batch's `multiple` ack must
        // not overtake this batch's acks on the wire.
        let mut unsettled = self.unsettled.lock().await;
        let planned = plan(&unsettled, batch, failed);
        for (tag, _) in batch {
            unsettled.remove(tag);
        }
        match planned {
            AckPlan::Multiple(last) => {
                self.channel
                    .basic_ack(last, BasicAckOptions { multiple: true })
                    .await
            }
            AckPlan::Each(tags) => {
                for tag in tags {
                    self.channel
                        .basic_ack(tag, BasicAckOptions::default())
                        .await?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Settled::{AckWanted, Otherwise};
    use super::*;

    fn unsettled(tags: &[u64]) -> BTreeSet<u64> {
        tags.iter().copied().collect()
    }

    #[test]
    fn a_batch_after_everything_settled_is_one_multiple_ack() {
        let batch = [(4, AckWanted), (5, AckWanted), (6, AckWanted)];
        assert_eq!(
            plan(&unsettled(&[4, 5, 6, 7, 8]), &batch, false),
            AckPlan::Multiple(6)
        );
    }

    #[test]
    fn an_older_message_still_being_handled_is_never_acked_by_a_later_batch() {
        let batch = [(4, AckWanted), (5, AckWanted)];
        assert_eq!(
            plan(&unsettled(&[2, 4, 5]), &batch, false),
            AckPlan::Each(vec![4, 5])
        );
    }

    #[test]
    fn a_nacked_message_inside_the_batch_is_passed_over_by_the_multiple_ack() {
        let batch = [(4, AckWanted), (5, Otherwise), (6, AckWanted)];
        assert_eq!(
            plan(&unsettled(&[4, 5, 6]), &batch, false),
            AckPlan::Multiple(6)
        );
        // The last tag wanting an ack bounds it: a nacked last one is not acked.
        let batch = [(4, AckWanted), (5, AckWanted), (6, Otherwise)];
        assert_eq!(
            plan(&unsettled(&[4, 5, 6, 7]), &batch, false),
            AckPlan::Multiple(5)
        );
    }

    #[test]
    fn a_failed_settle_or_a_single_message_is_acked_on_its_own() {
        let batch = [(4, AckWanted), (5, Otherwise), (6, AckWanted)];
        assert_eq!(
            plan(&unsettled(&[4, 5, 6]), &batch, true),
            AckPlan::Each(vec![4, 6])
        );
        assert_eq!(
            plan(&unsettled(&[4]), &[(4, AckWanted)], false),
            AckPlan::Each(vec![4])
        );
        assert_eq!(
            plan(&unsettled(&[4]), &[(4, Otherwise)], false),
            AckPlan::Each(vec![])
        );
    }
}
