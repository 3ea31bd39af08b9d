//! Verification: the jobs table must equal the fold of the events table. Used by the
//! conformance suite, `keel verify` and the torture test.

use std::collections::HashMap;

use keel_core::{Job, apply};
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub jobs: usize,
    pub events: usize,
    /// Jobs whose row differs from their events' fold, or exists on one side only.
    pub mismatched: Vec<Uuid>,
}

const PAGE: usize = 5_000;

pub(crate) async fn run<S: Store + ?Sized>(store: &S) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut folded: HashMap<Uuid, Option<Job>> = HashMap::new();
    let mut after = 0;
    loop {
        let events = store.export_events(after, PAGE).await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        report.events += events.len();
        for ev in events {
            let slot = folded.entry(ev.job_id).or_insert(None);
            *slot = apply(slot.take(), &ev.data, ev.at);
        }
    }
    let mut after = None;
    loop {
        let jobs = store.export_jobs(after, PAGE).await?;
        let Some(last) = jobs.last() else { break };
        after = Some(last.id);
        report.jobs += jobs.len();
        for job in jobs {
            if folded.remove(&job.id).flatten().as_ref() != Some(&job) {
                report.mismatched.push(job.id);
            }
        }
    }
    // Whatever is left folded to a live job that has no row.
    report.mismatched.extend(
        folded
            .into_iter()
            .filter(|(_, j)| j.is_some())
            .map(|(id, _)| id),
    );
    Ok(report)
}
