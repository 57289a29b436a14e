//! Which stream an event goes to, and the Redis keys of each partition (`STREAM_PARTITIONS`).
//!
//! - N = 1: one partition, the stream named `EVENTS_STREAM` and its `<EVENTS_STREAM>:dlq`, exactly
//!   the keys of a deployment that predates partitions.
//! - N > 1: partition `i` is the stream `<EVENTS_STREAM>:{p<i>-<k>}` and its dead letters are
//!   `<EVENTS_STREAM>:{p<i>-<k>}:dlq`: both carry the hash tag `p<i>-<k>`, so they sit in one Redis
//!   Cluster slot (a MULTI over both is allowed). `k` is the smallest number that puts the tag's
//!   slot near the middle of the `i`-th of N equal slot ranges ([`Partitions::new`]); clusters
//!   split the 16,384 slots into equal contiguous ranges per master, so the partitions spread over
//!   the masters as evenly as N allows.
//!
//! Routing ([`Partitions::route`]) is FNV-1a (64 bit) of the event's `aggregate_id`, else its `id`,
//! mod N: stable across processes, versions and machines, so one aggregate's events always go to
//! one partition and keep their order there.

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;
/// Most partitions a deployment may have.
pub const MAX_PARTITIONS: u32 = 256;

/// The Redis Cluster slot of `key` (CRC16/XMODEM of its hash tag, else of the key, mod 16,384).
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| key[open + 1..].find('}').map(|len| &bytes[open + 1..open + 1 + len]))
        .filter(|tag| !tag.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// Whether `key` has a non-empty hash tag.
pub fn has_hash_tag(key: &str) -> bool {
    key.find('{').and_then(|open| key[open + 1..].find('}')).is_some_and(|len| len > 0)
}

/// The Redis keys of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 0-based; stored with each event as `partition`.
    pub index: u32,
    /// The partition's stream.
    pub stream: String,
    /// Its dead-letter stream, `<stream>:dlq`.
    pub dlq: String,
}

/// Every partition of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    all: Vec<Partition>,
}

impl Partitions {
    /// The `n` partitions of `stream` (`n` ≥ 1).
    pub fn new(stream: &str, n: u32) -> Self {
        let n = n.max(1);
        if n == 1 {
            return Self { all: vec![partition(0, stream.to_string())] };
        }
        let width = u32::from(SLOTS) / n;
        // How close to the middle of its range a partition's slot must be: a sixteenth of the
        // range, so a partition near a master's boundary does not stray onto the next master.
        let tolerance = (width / 16).max(2);
        let all = (0..n)
            .map(|i| {
                let middle = i * u32::from(SLOTS) / n + width / 2;
                let tag = (0u32..)
                    .map(|k| format!("p{i}-{k}"))
                    .find(|tag| u32::from(slot(&format!("{{{tag}}}"))).abs_diff(middle) < tolerance)
                    .unwrap_or_default();
                partition(i, format!("{stream}:{{{tag}}}"))
            })
            .collect();
        Self { all }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Never true: there is always at least one partition.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// All of them, in index order.
    pub fn iter(&self) -> std::slice::Iter<'_, Partition> {
        self.all.iter()
    }

    /// Partition 0 (there is always one).
    pub fn first(&self) -> &Partition {
        &self.all[0]
    }

    /// Partition `index`, if there is one.
    pub fn get(&self, index: u32) -> Option<&Partition> {
        self.all.get(index as usize)
    }

    /// The partition for an event whose routing key is `key` (its `aggregate_id`, else its `id`).
    pub fn route(&self, key: &str) -> &Partition {
        self.for_hash(evp_events::entry::route_hash(key))
    }

    /// The partition for a routing hash ([`evp_events::entry::route_hash`]).
    pub fn for_hash(&self, hash: u64) -> &Partition {
        &self.all[(hash % self.all.len() as u64) as usize]
    }
}

impl<'a> IntoIterator for &'a Partitions {
    type Item = &'a Partition;
    type IntoIter = std::slice::Iter<'a, Partition>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

fn partition(index: u32, stream: String) -> Partition {
    Partition { index, dlq: format!("{stream}:dlq"), stream }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_keeps_the_plain_keys() {
        let p = Partitions::new("events", 1);
        assert_eq!(p.len(), 1);
        let only = Partition { index: 0, stream: "events".into(), dlq: "events:dlq".into() };
        assert_eq!(p.route("anything"), &only);
    }

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}")); // empty tag: the whole key
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert!(has_hash_tag("{events}") && !has_hash_tag("events") && !has_hash_tag("ev{}ents"));
    }

    #[test]
    fn partitions_share_a_slot_with_their_dead_letters_and_spread_over_the_slots() {
        for n in [2u32, 3, 8, 16, 100, MAX_PARTITIONS] {
            let parts = Partitions::new("events", n);
            assert_eq!(parts.len(), n as usize);
            for (i, p) in parts.iter().enumerate() {
                assert_eq!(p.index as usize, i);
                assert_eq!(slot(&p.stream), slot(&p.dlq), "{p:?}");
                assert_eq!(p.dlq, format!("{}:dlq", p.stream));
                // Inside its own range of slots.
                let s = u32::from(slot(&p.stream));
                assert_eq!(s * n / u32::from(SLOTS), i as u32, "n={n} {p:?} slot {s}");
            }
        }
        // Three masters with contiguous equal ranges hold 3, 2 and 3 of eight partitions.
        let parts = Partitions::new("events", 8);
        let mut per_master = [0; 3];
        for p in &parts {
            per_master[(u32::from(slot(&p.stream)) * 3 / u32::from(SLOTS)) as usize] += 1;
        }
        assert_eq!(per_master, [3, 2, 3]);
        assert_eq!(parts.get(0).unwrap().stream, Partitions::new("events", 8).get(0).unwrap().stream);
    }

    #[test]
    fn routing_is_fnv1a_and_stable() {
        // FNV-1a 64 test vectors: "" → cbf29ce484222325, "a" → af63dc4c8601ec8c.
        use evp_events::entry::route_hash;
        assert_eq!((route_hash(""), route_hash("a")), (0xcbf29ce484222325, 0xaf63dc4c8601ec8c));
        assert_eq!(Partitions::new("events", 7).route("a").index, (0xaf63dc4c8601ec8cu64 % 7) as u32);
        let parts = Partitions::new("events", 8);
        let mut seen = [0usize; 8];
        for i in 0..8000 {
            let key = format!("order-{i}");
            let p = parts.route(&key);
            assert_eq!(p, parts.route(&key));
            seen[p.index as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
