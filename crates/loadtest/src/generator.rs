//! Request bodies. Every event of a run has the id `<run>-<n>` and the type `loadtest.<run>`, so the
//! verifier can find exactly this run's events and tell which are missing.

/// Builds the bodies of one run.
#[derive(Debug, Clone)]
pub struct Generator {
    pub run_id: String,
    event_type: String,
    /// Events per request; 1 means `POST /events` with a single object.
    pub batch: u64,
    /// Total events, when the run is bounded by count.
    pub total: Option<u64>,
    padding: String,
}

impl Generator {
    pub fn new(run_id: &str, batch: u64, total: Option<u64>, payload_bytes: usize) -> Self {
        Self {
            run_id: run_id.to_string(),
            event_type: event_type(run_id),
            batch,
            total,
            padding: "x".repeat(payload_bytes),
        }
    }

    /// The same run with another event type (every event still has its own id).
    pub fn with_event_type(mut self, event_type: &str) -> Self {
        self.event_type = event_type.to_owned();
        self
    }

    /// The event type shared by every event of the run.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The global indexes of the events in request `request`.
    pub fn events_of(&self, request: u64) -> std::ops::Range<u64> {
        let start = request * self.batch;
        let end = start + self.batch;
        start..self.total.map_or(end, |t| end.min(t))
    }

    /// Number of requests a count-bounded run sends.
    pub fn requests(&self) -> Option<u64> {
        self.total.map(|t| t.div_ceil(self.batch))
    }

    /// The JSON body of request `request`.
    pub fn body(&self, request: u64) -> Vec<u8> {
        let events = self.events_of(request);
        let mut out = Vec::with_capacity(events.clone().count() * (120 + self.padding.len()));
        if self.batch > 1 {
            out.push(b'[');
        }
        for (k, n) in events.enumerate() {
            if k > 0 {
                out.push(b',');
            }
            let event = EventOut {
                event_type: &self.event_type,
                id: event_id(&self.run_id, n),
                source: "evp-loadtest",
                data: DataOut {
                    seq: n,
                    path: "/pricing",
                    user: format!("u-{}", n % 1000),
                    pad: &self.padding,
                },
            };
            // Serializing strings and integers into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &event);
        }
        if self.batch > 1 {
            out.push(b']');
        }
        out
    }
}

/// One event as sent: a struct with borrowed fields, serialized straight into the body (a
/// `serde_json::Value` built per event cost the generator more CPU than the ingest spends on it).
#[derive(serde::Serialize)]
struct EventOut<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    id: String,
    source: &'static str,
    data: DataOut<'a>,
}

#[derive(serde::Serialize)]
struct DataOut<'a> {
    seq: u64,
    path: &'static str,
    user: String,
    pad: &'a str,
}

pub fn event_type(run_id: &str) -> String {
    format!("loadtest.{run_id}")
}

pub fn event_id(run_id: &str, n: u64) -> String {
    format!("{run_id}-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use evp_events::input::{Admission, Limits, admit_batch, admit_one};

    #[test]
    fn bodies_are_valid_for_the_ingest_and_cover_every_event_once() {
        let g = Generator::new("r1", 3, Some(7), 10);
        assert_eq!(g.requests(), Some(3));
        let adm = Admission::new("t", 0, Limits::default());
        let mut ids = Vec::new();
        for r in 0..3 {
            ids.extend(admit_batch(&g.body(r), &adm).unwrap().into_iter().map(|e| e.id));
        }
        let expected: Vec<String> = (0..7).map(|n| event_id("r1", n)).collect();
        assert_eq!(ids, expected);

        let single = Generator::new("r2", 1, Some(2), 0);
        assert_eq!(admit_one(&single.body(1), &adm).unwrap().id, "r2-1");
    }
}
