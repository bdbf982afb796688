//! Owns tables `events` (the bounded ring of orca's event stream, by sequence number) and
//! `service_events` (the index of each service's events, which bounds what one service keeps).

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::{decode, encode, Versioned};
use crate::{Store, StoreError};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SERVICE_EVENTS: TableDefinition<(&str, u64), ()> = TableDefinition::new("service_events");
const SCHEMA: u32 = 1;

/// Events kept in the ring (the newest); older ones are pruned on append.
pub const EVENTS_KEPT: u64 = 10_000;
/// Events kept per service (the newest), so one noisy service cannot push every other
/// service's history out of the ring.
pub const EVENTS_PER_SERVICE_KEPT: u64 = 1_000;

/// One event of the stream, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sequence number, increasing (assigned by [`Store::append_event`]).
    #[serde(default)]
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Dotted kind, e.g. `instance.crashed`, `rollout.rolled_back`.
    pub kind: String,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// Project, when the event concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Service name (without the project), when the event concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Instance (container name), when the event concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The service revision concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// One human sentence.
    pub message: String,
    /// Structured details (exit code, reason, traffic percent...).
    #[serde(default)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

impl EventRecord {
    /// `project/service`, when both are set.
    pub fn service_key(&self) -> Option<String> {
        match (&self.project, &self.service) {
            (Some(p), Some(s)) => Some(format!("{p}/{s}")),
            _ => None,
        }
    }
}

/// Which events [`Store::list_events`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events after this sequence number.
    pub after_seq: Option<u64>,
    /// Only events at or after this time (unix ms).
    pub since_ms: Option<u64>,
    /// Only this project's events.
    pub project: Option<String>,
    /// Only this service's events (name without project; with `project`, that one service).
    pub service: Option<String>,
    /// Only events of this kind (`instance.crashed`) or kind family (`instance`).
    pub kind: Option<String>,
    /// At most this many (the newest of the matching ones).
    pub limit: usize,
}

impl EventQuery {
    /// Whether one event passes the filters (the limit aside).
    pub fn matches(&self, e: &EventRecord) -> bool {
        self.after_seq.is_none_or(|s| e.seq > s)
            && self.since_ms.is_none_or(|t| e.at_ms >= t)
            && self
                .project
                .as_ref()
                .is_none_or(|p| e.project.as_ref() == Some(p))
            && self
                .service
                .as_ref()
                .is_none_or(|s| e.service.as_ref() == Some(s))
            && self.kind.as_ref().is_none_or(|k| {
                e.kind == *k
                    || e.kind
                        .strip_prefix(k.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(EVENTS)?;
    txn.open_table(SERVICE_EVENTS)?;
    Ok(())
}

fn decode_row(seq: u64, bytes: &[u8]) -> Result<EventRecord, StoreError> {
    decode::<Versioned<EventRecord>>("events", &seq.to_string(), bytes, SCHEMA, |r| r.schema)
        .map(|r| r.value)
}

impl Store {
    /// Appends an event (assigning its `seq`); see [`Store::append_events`].
    pub fn append_event(&self, event: &EventRecord) -> Result<EventRecord, StoreError> {
        let mut rows = self.append_events(std::slice::from_ref(event))?;
        Ok(rows.pop().expect("one event in, one out"))
    }

    /// Appends events in one transaction (assigning their `seq`s in order), then prunes the
    /// ring to the newest [`EVENTS_KEPT`] and each service to its newest
    /// [`EVENTS_PER_SERVICE_KEPT`]. Returns the stored events.
    pub fn append_events(&self, events: &[EventRecord]) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db().begin_write()?;
        let mut rows = Vec::with_capacity(events.len());
        {
            let mut table = txn.open_table(EVENTS)?;
            let mut index = txn.open_table(SERVICE_EVENTS)?;
            let mut seq = table.last()?.map_or(0, |(k, _)| k.value());
            let mut touched = std::collections::BTreeSet::new();
            for event in events {
                seq += 1;
                let mut row = event.clone();
                row.seq = seq;
                let bytes = encode(&Versioned {
                    schema: SCHEMA,
                    value: row.clone(),
                });
                table.insert(seq, bytes.as_slice())?;
                if let Some(key) = row.service_key() {
                    index.insert((key.as_str(), seq), ())?;
                    touched.insert(key);
                }
                rows.push(row);
            }
            // Each touched service's own bound.
            for key in &touched {
                let mut mine = Vec::new();
                for entry in index.range((key.as_str(), 0)..=(key.as_str(), u64::MAX))? {
                    mine.push(entry?.0.value().1);
                }
                let over = (mine.len() as u64).saturating_sub(EVENTS_PER_SERVICE_KEPT) as usize;
                for old in &mine[..over] {
                    index.remove((key.as_str(), *old))?;
                    table.remove(*old)?;
                }
            }
            // The ring's bound: drop the oldest, with their index rows.
            if seq > EVENTS_KEPT {
                let cutoff = seq - EVENTS_KEPT;
                let mut old = Vec::new();
                for entry in table.range(..=cutoff)? {
                    let (k, v) = entry?;
                    let seq = k.value();
                    // An unreadable old row is pruned all the same.
                    old.push((seq, decode_row(seq, v.value()).ok()));
                }
                for (seq, rec) in old {
                    table.remove(seq)?;
                    if let Some(key) = rec.as_ref().and_then(EventRecord::service_key) {
                        index.remove((key.as_str(), seq))?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(rows)
    }

    /// The newest `query.limit` events matching `query`, oldest first.
    pub fn list_events(&self, query: &EventQuery) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        if query.limit == 0 {
            return Ok(out);
        }
        let from = query.after_seq.map_or(0, |s| s + 1);
        match (&query.project, &query.service) {
            (Some(p), Some(s)) => {
                let key = format!("{p}/{s}");
                let index = txn.open_table(SERVICE_EVENTS)?;
                for entry in index
                    .range((key.as_str(), from)..=(key.as_str(), u64::MAX))?
                    .rev()
                {
                    let seq = entry?.0.value().1;
                    if let Some(v) = table.get(seq)? {
                        let e = decode_row(seq, v.value())?;
                        if query.since_ms.is_some_and(|t| e.at_ms < t) {
                            break;
                        }
                        if query.matches(&e) {
                            out.push(e);
                            if out.len() == query.limit {
                                break;
                            }
                        }
                    }
                }
            }
            _ => {
                for entry in table.range(from..)?.rev() {
                    let (k, v) = entry?;
                    let e = decode_row(k.value(), v.value())?;
                    if query.since_ms.is_some_and(|t| e.at_ms < t) {
                        break;
                    }
                    if query.matches(&e) {
                        out.push(e);
                        if out.len() == query.limit {
                            break;
                        }
                    }
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// How many events the ring holds.
    pub fn count_events(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db().begin_read()?;
        Ok(txn.open_table(EVENTS)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    fn ev(at: u64, service: Option<&str>) -> EventRecord {
        EventRecord {
            seq: 0,
            at_ms: at,
            kind: "instance.started".into(),
            severity: "info".into(),
            project: service.map(|_| "shop".to_string()),
            service: service.map(str::to_string),
            instance: None,
            revision: Some(1),
            message: format!("event at {at}"),
            fields: BTreeMap::from([("n".to_string(), serde_json::json!(at))]),
        }
    }

    fn all() -> EventQuery {
        EventQuery {
            limit: usize::MAX,
            ..EventQuery::default()
        }
    }

    #[test]
    fn events_round_trip_in_order_with_filters() {
        let (_d, store) = store();
        for i in 0..10 {
            let svc = if i % 2 == 0 { Some("web") } else { Some("db") };
            let e = store.append_event(&ev(i * 100, svc)).unwrap();
            assert_eq!(e.seq, i + 1);
        }
        store.append_event(&ev(2000, None)).unwrap();
        let every = store.list_events(&all()).unwrap();
        assert_eq!(every.len(), 11);
        assert!(every.windows(2).all(|w| w[0].seq < w[1].seq));
        let web = store
            .list_events(&EventQuery {
                project: Some("shop".into()),
                service: Some("web".into()),
                ..all()
            })
            .unwrap();
        assert_eq!(
            web.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![0, 200, 400, 600, 800]
        );
        let recent = store
            .list_events(&EventQuery {
                since_ms: Some(500),
                limit: 2,
                ..all()
            })
            .unwrap();
        assert_eq!(
            recent.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![900, 2000]
        );
        let after = store
            .list_events(&EventQuery {
                after_seq: Some(9),
                ..all()
            })
            .unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].fields["n"], serde_json::json!(900));
    }

    #[test]
    fn one_service_is_bounded_without_evicting_others() {
        let (_d, store) = store();
        store.append_event(&ev(1, Some("quiet"))).unwrap();
        let noisy: Vec<_> = (0..(EVENTS_PER_SERVICE_KEPT + 20))
            .map(|i| ev(10 + i, Some("noisy")))
            .collect();
        store.append_events(&noisy[..500]).unwrap();
        store.append_events(&noisy[500..]).unwrap();
        let noisy = store
            .list_events(&EventQuery {
                project: Some("shop".into()),
                service: Some("noisy".into()),
                ..all()
            })
            .unwrap();
        assert_eq!(noisy.len() as u64, EVENTS_PER_SERVICE_KEPT);
        assert_eq!(noisy[0].at_ms, 10 + 20);
        let quiet = store
            .list_events(&EventQuery {
                service: Some("quiet".into()),
                ..all()
            })
            .unwrap();
        assert_eq!(quiet.len(), 1);
        assert_eq!(store.count_events().unwrap(), EVENTS_PER_SERVICE_KEPT + 1);
    }

    #[test]
    fn the_ring_is_bounded() {
        let (_d, store) = store();
        // Events of many services, so only the ring's bound applies.
        let many: Vec<_> = (0..(EVENTS_KEPT + 7))
            .map(|i| ev(i, Some(&format!("s{}", i % 50))))
            .collect();
        for chunk in many.chunks(1000) {
            store.append_events(chunk).unwrap();
        }
        assert_eq!(store.count_events().unwrap(), EVENTS_KEPT);
        let every = store.list_events(&all()).unwrap();
        assert_eq!(every[0].seq, 8);
        // The index was pruned with the ring.
        let s0 = store
            .list_events(&EventQuery {
                project: Some("shop".into()),
                service: Some("s7".into()),
                ..all()
            })
            .unwrap();
        assert!(s0.iter().all(|e| e.seq >= 8));
        assert_eq!(s0.len() as u64, EVENTS_KEPT / 50);
    }
}
