//! A counter per entry, kept as one map from the entry's shared name to its count and
//! encoded at each scrape. prometheus-client's `Family` keeps a hash map of owned label sets
//! to counters that are each an `Arc` of their own: at 10,000 entries, over a megabyte once
//! every entry has sent; this map holds a pointer and a number per entry.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A per-entry counter (`<name>_total{entry="…"}`). Clones share the counts.
#[derive(Debug, Clone)]
pub struct PerEntry {
    name: &'static str,
    help: &'static str,
    counts: Arc<Mutex<BTreeMap<Arc<str>, u64>>>,
}

impl PerEntry {
    /// An empty counter family named `name` (without `_total`).
    #[must_use]
    pub fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            counts: Arc::default(),
        }
    }

    /// Adds one to `entry`'s count; the name is shared, not copied.
    pub fn inc(&self, entry: &Arc<str>) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(entry) {
            Some(n) => *n += 1,
            None => {
                counts.insert(Arc::clone(entry), 1);
            }
        }
    }

    /// `entry`'s count (0 when it never counted).
    #[must_use]
    pub fn get(&self, entry: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(entry)
            .copied()
            .unwrap_or(0)
    }
}

impl Collector for PerEntry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copied out first: a scrape must not hold the beat's counting behind the encoding.
        let counts: Vec<(Arc<str>, u64)> = self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (Arc::clone(k), *v))
            .collect();
        let probe = ConstCounter::new(0u64);
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, probe.metric_type())?;
        for (entry, n) in &counts {
            let labels = [("entry", &**entry)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn counts_per_entry_render_as_counters_and_keep_the_entrys_name_shared() {
        let sent = PerEntry::new("messages_sent", "Messages sent per entry");
        let mut registry = Registry::with_prefix("beatd");
        registry.register_collector(Box::new(sent.clone()));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b \"q\"".into());
        sent.inc(&a);
        sent.inc(&a);
        sent.inc(&b);
        assert_eq!(
            (sent.get("a"), sent.get("b \"q\""), sent.get("c")),
            (2, 1, 0)
        );
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "the map holds the entry's name, not a copy"
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE beatd_messages_sent counter"),
            "{text}"
        );
        assert!(
            text.contains("beatd_messages_sent_total{entry=\"a\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("beatd_messages_sent_total{entry=\"b \\\"q\\\"\"} 1\n"),
            "label values escaped: {text}"
        );
    }
}
