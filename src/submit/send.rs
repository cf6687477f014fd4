//! Sending the outbox: each pending (or crashed-in-flight, or transiently failed) submission is
//! marked `sending` and committed, then posted, then its answer recorded (read by [`super::answer`]),
//! several at a time. A crash between the POST and the record leaves `sending` rows; the next run
//! re-sends the same body and Clazar's duplicate answer confirms it had arrived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use futures::StreamExt;

use super::answer::interpret;
use crate::clazar::Client;
use crate::ledger::{Ledger, LineStatus, OutboxItem, SubmissionStatus, SubmissionUpdate};

/// The failpoint that kills the process right after an answer arrives, before it is recorded
/// (`METERBOOK_FAILPOINT=after-send`), to test crash recovery.
pub const FAILPOINT_AFTER_SEND: &str = "after-send";

/// What a send step did, counted by line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    pub requests: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub warning: u64,
    pub rejected: u64,
    pub failed: u64,
    pub transient: u64,
}

impl SendReport {
    pub fn needs_attention(&self) -> bool {
        self.warning + self.rejected + self.failed + self.transient > 0
    }

    fn count(&mut self, u: &SubmissionUpdate, lines: usize) {
        self.requests += 1;
        if let (true, Some(every)) = (u.lines.is_empty(), u.status.of_every_line()) {
            self.add(every, lines as u64);
        }
        for l in &u.lines {
            self.add(l.status, 1);
        }
    }

    fn add(&mut self, status: LineStatus, n: u64) {
        let counter = match status {
            LineStatus::Accepted => &mut self.accepted,
            // Accepted before: by Clazar (a duplicate), or by the predecessor (imported).
            LineStatus::Duplicate | LineStatus::Imported => &mut self.duplicate,
            LineStatus::Warning => &mut self.warning,
            LineStatus::Rejected => &mut self.rejected,
            LineStatus::Failed => &mut self.failed,
            // Without an answer: the next run sends it again.
            LineStatus::Transient | LineStatus::Pending | LineStatus::Sending => {
                &mut self.transient
            }
        };
        *counter += n;
    }

    pub fn line(&self) -> String {
        format!(
            "{} requests: {} lines accepted, {} already accepted (duplicate), {} warnings, {} rejected, {} failed, {} without an answer",
            self.requests, self.accepted, self.duplicate, self.warning, self.rejected, self.failed, self.transient
        )
    }
}

/// The sending step: posts every outbox submission (all, or those in `only`): a contract's in
/// order, oldest first, and `concurrency` contracts at a time. Each is marked `sending` and
/// committed before its request leaves, and its answer is recorded when it arrives. Stops with
/// an error only when Clazar refuses the credentials.
pub async fn send_outbox(
    ledger: &Mutex<Ledger>,
    client: &Client,
    only: Option<&[i64]>,
    concurrency: usize,
) -> Result<SendReport> {
    let items = lock(ledger).outbox(only)?;
    let reconciling = items
        .iter()
        .filter(|i| i.status != SubmissionStatus::Pending)
        .count();
    if reconciling > 0 {
        tracing::info!(
            "re-sending {reconciling} submissions left in flight or without an answer by an earlier run"
        );
    }
    let bar = progress_bar(items.len());
    // Set when Clazar refuses the credentials: what has not started yet stays pending.
    let stop = AtomicBool::new(false);
    // A contract's submissions go one after another, oldest period first (the outbox's order);
    // different contracts go `concurrency` at a time.
    let results: Vec<Result<Option<(SubmissionUpdate, usize)>>> =
        futures::stream::iter(by_contract(items).into_iter().map(|queue| {
            let (stop, bar) = (&stop, &bar);
            async move {
                let mut done = Vec::with_capacity(queue.len());
                for item in queue {
                    done.push(send_one(ledger, client, item, stop).await);
                    bar.inc(1);
                }
                done
            }
        }))
        .buffer_unordered(concurrency.max(1))
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    bar.finish_and_clear();
    let mut report = SendReport::default();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(Some((u, lines))) => report.count(&u, lines),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// The outbox split into one queue per contract, each keeping the outbox's order (oldest first).
fn by_contract(items: Vec<OutboxItem>) -> Vec<Vec<OutboxItem>> {
    let mut queues: Vec<Vec<OutboxItem>> = Vec::new();
    let mut index: std::collections::HashMap<(String, String), usize> = Default::default();
    for item in items {
        let key = (item.service_key.clone(), item.contract_id.clone());
        let at = *index.entry(key).or_insert_with(|| {
            queues.push(Vec::new());
            queues.len() - 1
        });
        queues[at].push(item);
    }
    queues
}

/// A bar on a terminal, nothing otherwise (the summary line says the rest).
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests [{elapsed_precise}]",
        )
        .expect("a valid template"),
    );
    bar
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn send_one(
    ledger: &Mutex<Ledger>,
    client: &Client,
    item: OutboxItem,
    stop: &AtomicBool,
) -> Result<Option<(SubmissionUpdate, usize)>> {
    if stop.load(Ordering::SeqCst) {
        return Ok(None);
    }
    lock(ledger).mark_sending(item.id)?;
    let delivery = match client.deliver(&item.payload).await {
        Ok(d) => d,
        Err(e) => {
            // Clazar does not let us in (see ClazarError): nothing reached the metering endpoint
            // with a valid token, so the submission goes back to pending.
            stop.store(true, Ordering::SeqCst);
            lock(ledger).release(item.id)?;
            return Err(crate::error::Fatal::Config(e.to_string()).into());
        }
    };
    crate::failpoint::hit(FAILPOINT_AFTER_SEND);
    let update = interpret(&item, &delivery);
    report_update(&item, &update);
    lock(ledger)
        .record_answer(item.id, &update)
        .with_context(|| format!("recording the answer for contract {}", item.contract_id))?;
    Ok(Some((update, item.lines.len())))
}

fn report_update(item: &OutboxItem, u: &SubmissionUpdate) {
    let what = format!(
        "{} contract {} {} {}",
        item.service_key, item.contract_id, item.period_kind, item.period
    );
    match u.status {
        SubmissionStatus::Answered => {
            for l in u.lines.iter().filter(|l| !l.status.delivered()) {
                let dimension = item
                    .lines
                    .iter()
                    .find(|(id, _)| *id == l.line_id)
                    .map(|(_, d)| d.as_str())
                    .unwrap_or("?");
                tracing::warn!(
                    "{what} {dimension}: {} ({})",
                    l.status,
                    l.message.as_deref().unwrap_or("no message")
                );
            }
        }
        status => tracing::warn!(
            "{what}: {status}: {}",
            u.error.as_deref().unwrap_or("no detail")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, contract: &str, period: &str) -> OutboxItem {
        OutboxItem {
            id,
            service_key: "svc".into(),
            contract_id: contract.into(),
            period_kind: crate::period::PeriodKind::Hour,
            period: period.into(),
            payload: String::new(),
            status: SubmissionStatus::Pending,
            attempts: 0,
            lines: Vec::new(),
        }
    }

    #[test]
    fn a_contracts_submissions_form_one_queue_in_the_outbox_order() {
        let queues = by_contract(vec![
            item(1, "a", "2025-06-01T00"),
            item(2, "b", "2025-06-01T00"),
            item(3, "a", "2025-06-01T01"),
            item(4, "b", "2025-06-01T01"),
            item(5, "c", "2025-06-01T02"),
        ]);
        let ids: Vec<Vec<i64>> = queues
            .iter()
            .map(|q| q.iter().map(|i| i.id).collect())
            .collect();
        assert_eq!(ids, [vec![1, 3], vec![2, 4], vec![5]]);
    }
}
