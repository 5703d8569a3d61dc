//! Callback events of the owned partitions: a callback waits while its chunk's submission
//! answer is not applied yet (so CREATED comes first), then becomes result records (copied from
//! the body as it arrived), a status transition and a state change.

use super::{header, Core};
use crate::domain::decide::callback_belongs;
use crate::domain::request::Mode;
use crate::domain::{apply_callback, CallbackFacts, RunResult, RunResultRef, RunState};
use crate::intake::CallbackPayload;
use crate::kafka::InboundRecord;
use crate::publish::{H_CHUNK, H_RECEIVED_AT};
use chrono::{DateTime, Utc};

impl Core {
    pub(super) fn on_callback(&mut self, record: InboundRecord) {
        let Some(request_id) = record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
        else {
            return self.dead_letter(&record, "callback record without a key".into());
        };
        let chunk = match header(&record, H_CHUNK).and_then(|v| v.parse::<u32>().ok()) {
            Some(c) => c,
            None => {
                return self.dead_letter(
                    &record,
                    format!("callback record without a valid {H_CHUNK} header"),
                )
            }
        };
        let waits = self.held.contains_key(&request_id)
            || self
                .jobs
                .get(&request_id)
                .is_some_and(|j| j.pending.contains(&chunk));
        if waits {
            // Its chunk's submission answer is not applied yet: CREATED goes first.
            self.held.entry(request_id).or_default().push_back(record);
            self.held_count += 1;
            self.metrics.callbacks_held.inc();
            return;
        }
        self.apply_callback_record(&request_id, chunk, &record);
    }

    /// Processes the held callbacks of `request_id` that no longer wait, in order.
    pub(super) fn release(&mut self, request_id: &str) {
        loop {
            let pending = self.jobs.get(request_id).map(|j| j.pending.clone());
            let Some(queue) = self.held.get_mut(request_id) else {
                return;
            };
            let next_chunk = queue
                .front()
                .and_then(|r| header(r, H_CHUNK))
                .and_then(|v| v.parse::<u32>().ok());
            if next_chunk.is_some_and(|c| pending.as_ref().is_some_and(|p| p.contains(&c))) {
                return;
            }
            let Some(record) = queue.pop_front() else {
                self.held.remove(request_id);
                return;
            };
            if queue.is_empty() {
                self.held.remove(request_id);
            }
            self.held_count -= 1;
            self.metrics.callbacks_held.dec();
            self.apply_callback_record(request_id, next_chunk.unwrap_or(0), &record);
        }
    }

    fn apply_callback_record(&mut self, request_id: &str, chunk: u32, record: &InboundRecord) {
        if super::workflow::is_v3_webhook(record) {
            return self.on_v3_webhook(request_id, chunk, record);
        }
        let received_at = header(record, H_RECEIVED_AT)
            .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        let body = record.payload.as_deref().unwrap_or_default();
        let payload = match CallbackPayload::parse(body) {
            Ok(p) => p,
            Err(e) => return self.dead_letter(record, format!("callback body unreadable: {e}")),
        };
        let p = record.partition;
        let Some(owned) = self.owned.get_mut(&p) else {
            return;
        };
        let state = owned.runs.entry(request_id.to_owned()).or_insert_with(|| {
            // A valid token proves the request is ours; its state is gone (deleted, or another
            // deployment's). Publish what the callback itself carries.
            tracing::warn!(
                request_id,
                run_uid = payload.run.run_uid,
                "callback for a request with no run state"
            );
            RunState::new(request_id, "", Mode::Async, Default::default(), 0)
        });
        if let Err(reason) = callback_belongs(state, chunk, payload.run.run_uid) {
            // A valid token replayed with another run: refused, with a trace for operators.
            self.metrics.callbacks_foreign_run.inc();
            return self.dead_letter(record, reason);
        }
        let facts = CallbackFacts {
            chunk,
            run_uid: payload.run.run_uid,
            batch_uid: payload.run.batch_uid,
            status: payload.run.status,
            error: payload.error.as_ref(),
            results: payload.results.len(),
        };
        let replayed = state
            .chunks
            .iter()
            .find(|c| c.index == chunk)
            .and_then(|c| c.runs.get(facts.run_uid))
            .is_some_and(|r| r.replayed_batches.contains(facts.batch_uid));
        let hold = self.reconcile.is_some();
        let out = apply_callback(state, &facts, self.config.dedupe_window, hold, received_at);
        if replayed {
            self.metrics.reconcile.replays_received.inc();
            if let Some(run) = state.chunk_mut(chunk).runs.get_mut(facts.run_uid) {
                run.replayed_batches.remove(facts.batch_uid);
            }
        }
        owned.open_runs += out.effects.open_runs;
        self.metrics.runs_in_flight.add(out.effects.open_runs);
        let mut outputs = Vec::with_capacity(payload.results.len() + 1);
        let mut unencodable = None;
        if !out.duplicate {
            for (index, item) in payload.results.iter().enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let built = self.records.result_ref(&RunResultRef {
                    result_id: RunResult::result_id(
                        payload.run.run_uid,
                        payload.run.batch_uid,
                        index,
                    ),
                    request_id,
                    run_uid: payload.run.run_uid,
                    batch_uid: payload.run.batch_uid,
                    index,
                    action: &state.action,
                    input: payload.input,
                    custom_data: payload.custom_data,
                    result: item,
                    received_at,
                    metadata: &state.metadata,
                });
                match built {
                    Ok(record) => outputs.push(record),
                    Err(e) => {
                        unencodable = Some(e);
                        break;
                    }
                }
            }
        }
        // Results first: a consumer that sees the final status has the batch's results.
        if let (Some(event), None) = (&out.effects.status, &unencodable) {
            match self.records.status(event) {
                Ok(record) => outputs.push(record),
                Err(e) => unencodable = Some(e),
            }
        }
        if let Some(e) = unencodable {
            self.dirty.insert((p, request_id.to_owned()));
            if !self.encode_failed(&e, "callback outputs") {
                // Its results can never be written as configured: the callback is set aside
                // whole (never a part of its batch) with the reason.
                self.dead_letter(record, format!("callback outputs cannot be encoded: {e}"));
            }
            return;
        }
        let outcome = if out.duplicate {
            "duplicate"
        } else {
            "published"
        };
        self.metrics
            .callbacks_processed
            .with_label_values(&[outcome])
            .inc();
        for r in &outputs {
            self.send(r);
        }
        self.dirty.insert((p, request_id.to_owned()));
        self.received.push(received_at);
        let topic = record.topic.clone();
        self.complete(&topic, p, record.offset);
    }
}
