//! Claiming a batch's deliveries, and what happens when the database
//! refuses the statement for the data of one message in it.

use std::collections::{BTreeSet, HashMap};

use super::Pipeline;
use super::deliver::Pending;
use super::job::Job;
use super::record::Batch;
use crate::store::StoreError;
use crate::store::deliveries::{self, Claim};

impl Pipeline {
    /// Claims every pending delivery in one statement. Should the database
    /// refuse the statement's data, each message's deliveries are claimed on
    /// their own, so only the message at fault is dead-lettered and its
    /// batch-mates go on.
    pub(super) async fn claim(
        &self,
        jobs: &[Job],
        pending: &[Pending],
        batches: &mut [Batch],
    ) -> Result<HashMap<deliveries::Key, Claim>, StoreError> {
        let key = |p: &Pending| (jobs[p.job].key(&p.recipient), jobs[p.job].replay);
        let keys: Vec<(deliveries::Key, bool)> = pending.iter().map(key).collect();
        match self.claims.run(keys).await {
            Err(err) if err.refused_data().is_some() => {
                tracing::warn!(error = %err, "the database refused a batch's claims; claiming message by message");
            }
            claimed => return claimed,
        }
        let mut claims = HashMap::new();
        let job_indexes: BTreeSet<usize> = pending.iter().map(|p| p.job).collect();
        for job in job_indexes {
            let keys: Vec<(deliveries::Key, bool)> =
                pending.iter().filter(|p| p.job == job).map(key).collect();
            match self.claims.run(keys).await {
                Ok(claimed) => claims.extend(claimed),
                Err(err) => match super::refused_by_the_database(&err) {
                    Some(refused) => {
                        tracing::warn!(event_id = %jobs[job].notification.id, error = %err, "the database refused this event's claims; dead-lettering it");
                        batches[job].refused = Some(refused);
                    }
                    None => return Err(err),
                },
            }
        }
        Ok(claims)
    }
}
