//! A Redis stream entry id (`<ms>-<seq>`), with the one sortable form evp stores it in.
//!
//! Stream ids order by `(ms, seq)` as numbers, which strings do not; the stored `seq` field of a
//! document is [`EntryId::sortable`] (both parts zero-padded to 20 digits, a u64 each) so that
//! MongoDB's string order is the stream's order. [`EntryId::parse`] reads either form.

use std::fmt;
use std::str::FromStr;

/// A stream entry id; ids order as the stream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Reads `<ms>-<seq>`, as Redis writes it or zero-padded as [`sortable`](Self::sortable)
    /// writes it. `None` for anything else.
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }

    /// The smallest id after this one.
    pub const fn next(self) -> Self {
        if self.seq == u64::MAX { Self::new(self.ms + 1, 0) } else { Self::new(self.ms, self.seq + 1) }
    }

    /// The stored form: both parts zero-padded to 20 digits, so strings sort as the stream does.
    pub fn sortable(self) -> String {
        format!("{:020}-{:020}", self.ms, self.seq)
    }
}

/// `<ms>-<seq>`, the form Redis reads.
impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::parse(s).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::EntryId;

    #[test]
    fn both_forms_parse_and_the_sortable_one_sorts_as_the_stream_does() {
        let id = EntryId::parse("1700000000000-3").unwrap();
        assert_eq!(id, EntryId::new(1_700_000_000_000, 3));
        assert_eq!(id.to_string(), "1700000000000-3");
        assert_eq!(EntryId::parse(&id.sortable()), Some(id));
        for bad in ["garbage", "1-", "-1", "1-2-3", "+1-2", "1- 2", "99999999999999999999999-0"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
        let ids = ["5-1", "5-10", "10-0", "9-999", &format!("{}-{}", u64::MAX, u64::MAX)]
            .map(|s| EntryId::parse(s).unwrap());
        let mut by_string: Vec<String> = ids.iter().map(|id| id.sortable()).collect();
        by_string.sort();
        let mut by_id = ids.to_vec();
        by_id.sort();
        assert_eq!(by_string, by_id.iter().map(|id| id.sortable()).collect::<Vec<_>>());
    }

    #[test]
    fn next_carries_into_the_milliseconds() {
        assert_eq!(EntryId::new(5, 1).next(), EntryId::new(5, 2));
        assert_eq!(EntryId::new(5, u64::MAX).next(), EntryId::new(6, 0));
    }
}
