//! A range of stream positions read window by window, so that a read costs about what it returns.
//!
//! - [`Windows`]: `[from, before)` (sortable forms) cut into consecutive windows of append time,
//!   starting at one [`Edge`]: the first [`FIRST_WINDOW_MS`] wide, each next one 4 times wider,
//!   or sized by the last one's density when the reader says what it held ([`Windows::found`]);
//!   a reader whose read of a window stopped at a cap says what it read ([`Windows::resume_after`]):
//!   the walk goes on from just past it, and the next window is sized by how densely what it read
//!   lay (not by the whole window's width, most of which it did not read).
//!
//! **Why.** A subscription's read should cost what it delivers, not how far behind its consumer
//! is. MongoDB stops an index scan at the limit; a server that fetches every match of a range
//! before it limits them (secantusd-rs does, `docs/PERFORMANCE.md`) makes each poll of a consumer
//! far behind cost its whole backlog: a catch-up is then quadratic, and once one poll's backlog
//! takes longer than the read timeout, no poll delivers at all. Windows that start small find the
//! next events in a few cheap reads and fetch little more than the poll takes. The one read that
//! can still be large is the first after a long empty stretch: the window that crosses it is as
//! wide as the stretch. So a read from the beginning starts at the tenant's first position where
//! one is recorded ([`crate::first_positions`]).
//!
//! **Exact.** The windows are in order, contiguous and together the whole range, and a reader
//! takes each window's events in stream order until it has enough: what it has is the first
//! events of the range, as one read of the range with the same limit would have returned.

use evp_events::EntryId;

/// Which end of a range a walk starts from: the oldest (reading forward) or the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Oldest,
    Newest,
}

/// The first window's width, in milliseconds of append time.
pub const FIRST_WINDOW_MS: u64 = 10;
/// The most a window grows (or shrinks) from one to the next.
const MAX_FACTOR: f64 = 4.0;

/// The windows of one range, yielded in order from the edge as `(from, before)` sortable forms.
/// Tell it what each window held ([`found`](Self::found)) to size the next.
#[derive(Debug, Clone)]
pub struct Windows {
    /// What is left to walk, `[lo, hi)`; `None` when the bounds are not entry ids (then the
    /// range is one window).
    left: Option<(EntryId, EntryId)>,
    whole: Option<(String, String)>,
    edge: Edge,
    /// The next window's width, in milliseconds.
    span: u64,
    /// The width of the window last yielded.
    last: u64,
}

impl Windows {
    /// `[from, before)` from `edge`. With bounds that are not entry ids, or an empty range, the
    /// whole range is the one window.
    pub fn new(from: &str, before: &str, edge: Edge) -> Self {
        let left = match (EntryId::parse(from), EntryId::parse(before)) {
            (Some(lo), Some(hi)) if lo < hi => Some((lo, hi)),
            _ => None,
        };
        let whole = left.is_none().then(|| (from.to_owned(), before.to_owned()));
        Self { left, whole, edge, span: FIRST_WINDOW_MS, last: FIRST_WINDOW_MS }
    }

    /// The last window held `held` (events or keys); the next should hold about `next`: it is
    /// as wide as the last one's density says, within a factor of 4 of the last (without this,
    /// or when the last held nothing, 4 times as wide).
    pub fn found(&mut self, held: usize, next: usize) {
        if held > 0 {
            let factor = (next as f64 / held as f64).clamp(1.0 / MAX_FACTOR, MAX_FACTOR);
            self.span = ((self.last as f64 * factor).ceil() as u64).max(1);
        }
    }

    /// The last window was read only from `first` as far as `at` (the first and last keys a
    /// capped read returned, in the walk's direction): the walk goes on from just past `at`, so
    /// nothing of the window is skipped, and [`found`](Self::found) then sizes the next window by
    /// the width those keys span, the density of what was read.
    pub fn resume_after(&mut self, first: &str, at: &str) {
        let (Some((lo, hi)), Some(first), Some(at)) =
            (self.left.as_mut(), EntryId::parse(first), EntryId::parse(at))
        else {
            return;
        };
        match self.edge {
            Edge::Oldest => *lo = at.next(),
            Edge::Newest => *hi = at,
        }
        self.last = first.ms.abs_diff(at.ms) + 1;
    }
}

impl Iterator for Windows {
    type Item = (String, String);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(whole) = self.whole.take() {
            return Some(whole);
        }
        let (lo, hi) = self.left.as_mut()?;
        if *lo >= *hi {
            return None;
        }
        self.last = self.span;
        self.span = ((self.span as f64 * MAX_FACTOR) as u64).max(1);
        let (start, end) = match self.edge {
            Edge::Oldest => {
                let end = EntryId::new(lo.ms.saturating_add(self.last), 0);
                let end = if end > *lo && end < *hi { end } else { *hi };
                (std::mem::replace(lo, end), end)
            }
            Edge::Newest => {
                let start = EntryId::new(hi.ms.saturating_sub(self.last), 0);
                let start = if start > *lo && start < *hi { start } else { *lo };
                (start, std::mem::replace(hi, start))
            }
        };
        Some((start.sortable(), end.sortable()))
    }
}

#[cfg(test)]
mod tests {
    use evp_events::EntryId;

    use super::{Edge, Windows};

    fn id(ms: u64, seq: u64) -> String {
        EntryId::new(ms, seq).sortable()
    }

    /// The windows, as `(ms, seq)` pairs, the `i`-th told it held `found(i).0` and the next should
    /// hold `found(i).1`.
    fn walk(
        from: (u64, u64),
        before: (u64, u64),
        edge: Edge,
        found: impl Fn(usize) -> (usize, usize),
    ) -> Vec<((u64, u64), (u64, u64))> {
        let pair = |s: &str| EntryId::parse(s).map(|e| (e.ms, e.seq)).unwrap();
        let mut windows = Windows::new(&id(from.0, from.1), &id(before.0, before.1), edge);
        let mut out = Vec::new();
        while let Some((lo, hi)) = windows.next() {
            let (found, wanted) = found(out.len());
            windows.found(found, wanted);
            out.push((pair(&lo), pair(&hi)));
        }
        out
    }

    #[test]
    fn empty_windows_grow_fourfold_from_the_edge_and_cover_the_range() {
        // Not told, a walk grows as if every window were empty: it ends.
        let untold = Windows::new(&id(0, 0), &id(1_800_000_000_000, 0), Edge::Oldest).count();
        assert!((15..25).contains(&untold), "{untold}");
        let empty = |_| (0, 1000);
        assert_eq!(
            walk((1_000, 7), (1_300, 2), Edge::Oldest, empty),
            [
                ((1_000, 7), (1_010, 0)),
                ((1_010, 0), (1_050, 0)),
                ((1_050, 0), (1_210, 0)),
                ((1_210, 0), (1_300, 2))
            ]
        );
        assert_eq!(
            walk((1_000, 7), (1_300, 2), Edge::Newest, empty),
            [
                ((1_290, 0), (1_300, 2)),
                ((1_250, 0), (1_290, 0)),
                ((1_090, 0), (1_250, 0)),
                ((1_000, 7), (1_090, 0))
            ]
        );
        // From the beginning to now: a few dozen windows, contiguous.
        let now = 1_800_000_000_000;
        for edge in [Edge::Oldest, Edge::Newest] {
            let mut all = walk((0, 0), (now, 5), edge, empty);
            assert!(all.len() < 25, "{}", all.len());
            all.sort();
            assert_eq!((all.first().unwrap().0, all.last().unwrap().1), ((0, 0), (now, 5)));
            assert!(all.windows(2).all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1), "{all:?}");
        }
    }

    #[test]
    fn a_window_that_held_some_sizes_the_next_by_their_density() {
        // The first `n` widths of a walk whose every window held `held` and wants `next` after it.
        let widths = |held, next, n| -> Vec<u64> {
            let walked = walk((0, 0), (1_000, 0), Edge::Oldest, |_| (held, next));
            walked.iter().map(|(lo, hi)| hi.0 - lo.0).take(n).collect()
        };
        // 250 in 10 ms, and 750 wanted next: about 30 ms.
        assert_eq!(widths(250, 750, 3), [10, 30, 90]);
        // 900, and 100 wanted next: a quarter as wide at the most (never less than 1 ms).
        assert_eq!(widths(900, 100, 4), [10, 3, 1, 1]);
    }

    #[test]
    fn a_walk_resumes_just_past_the_last_key_a_capped_read_returned() {
        let mut oldest = Windows::new(&id(1_000, 0), &id(2_000, 0), Edge::Oldest);
        assert_eq!(oldest.next(), Some((id(1_000, 0), id(1_010, 0))));
        oldest.resume_after(&id(1_000, 2), &id(1_003, 7));
        assert_eq!(oldest.next().unwrap().0, id(1_003, 8), "from just past the last key read");
        let mut newest = Windows::new(&id(1_000, 0), &id(2_000, 0), Edge::Newest);
        assert_eq!(newest.next(), Some((id(1_990, 0), id(2_000, 0))));
        newest.resume_after(&id(1_999, 0), &id(1_995, 3));
        assert_eq!(newest.next().unwrap().1, id(1_995, 3), "up to the last key read, exclusive");
    }

    #[test]
    fn after_a_capped_read_the_next_window_is_sized_by_what_it_read() {
        // The window crossing a long empty stretch, capped at 1,000 keys that lie within 5 ms
        // (from 1,000,000 ms): the next window, for 1,000 more, is 5 ms wide, not hundreds of
        // thousands.
        let mut walk = Windows::new(&id(0, 0), &id(9_000_000, 0), Edge::Oldest);
        let (mut lo, mut hi) = walk.next().unwrap();
        while hi <= id(1_000_000, 0) {
            walk.found(0, 1_000);
            (lo, hi) = walk.next().unwrap();
        }
        let width = |lo: &str, hi: &str| EntryId::parse(hi).unwrap().ms - EntryId::parse(lo).unwrap().ms;
        assert!(width(&lo, &hi) > 100_000, "the crossing window [{lo}, {hi}) is wide");
        walk.resume_after(&id(1_000_000, 0), &id(1_000_004, 9));
        walk.found(1_000, 1_000);
        assert_eq!(walk.next(), Some((id(1_000_004, 10), id(1_000_009, 0))));
        // Wanting a tenth as many next: a quarter of that width (the most it narrows at once).
        walk.resume_after(&id(1_000_004, 10), &id(1_000_008, 3));
        walk.found(1_000, 100);
        assert_eq!(walk.next(), Some((id(1_000_008, 4), id(1_000_010, 0))));
    }

    #[test]
    fn empty_or_unparsable_ranges_are_one_window() {
        let one = |from: &str, before: &str| Windows::new(from, before, Edge::Oldest).collect::<Vec<_>>();
        assert_eq!(one(&id(5, 1), &id(5, 1)), [(id(5, 1), id(5, 1))]);
        assert_eq!(one("", "x"), [(String::new(), "x".to_string())]);
        // Near the end of the id space the windows still end.
        let top = walk((u64::MAX - 5, 0), (u64::MAX, u64::MAX), Edge::Oldest, |_| (0, 1));
        assert_eq!(top, [((u64::MAX - 5, 0), (u64::MAX, 0)), ((u64::MAX, 0), (u64::MAX, u64::MAX))]);
    }
}
