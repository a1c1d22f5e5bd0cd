//! The anti-replay sliding window of RFC 6479: a ring of 64-bit words, one bit per counter.
//!
//! The window accepts any counter above the greatest seen, and any counter at most
//! `WINDOW_LEN` below it that was not seen before. Moving the window forward clears whole words
//! instead of shifting bits, so an update costs O(1) amortised and at most `WORD_COUNT` word
//! writes. The window is 8,192 bits (like the Linux kernel's), of which one word is the slack
//! RFC 6479 needs, leaving 8,128 counters of reordering tolerance.

/// Words in the ring.
const WORD_COUNT: usize = 128;
/// Bits in the ring.
const BIT_COUNT: u64 = WORD_COUNT as u64 * 64;
/// How far below the greatest counter a counter may be and still be accepted.
pub const WINDOW_LEN: u64 = BIT_COUNT - 64;

const _: () = assert!(WORD_COUNT.is_power_of_two());
const _: () = assert!(WINDOW_LEN >= 2048);

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// Seen before.
    Duplicate,
    /// Too far below the greatest counter seen.
    TooOld,
}

/// The receive window of one session.
#[derive(Clone)]
pub struct ReplayWindow {
    words: [u64; WORD_COUNT],
    // Invariant: no counter above `greatest` has been accepted; 0 with `empty` set initially.
    greatest: u64,
    empty: bool,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { words: [0; WORD_COUNT], greatest: 0, empty: true }
    }
}

impl ReplayWindow {
    /// Whether `counter` would be accepted now (no state change), before spending an AEAD open.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if self.empty || counter > self.greatest {
            return Ok(());
        }
        if self.greatest - counter > WINDOW_LEN {
            return Err(ReplayError::TooOld);
        }
        let (word, bit) = Self::position(counter);
        if self.words[word] & bit != 0 { Err(ReplayError::Duplicate) } else { Ok(()) }
    }

    /// The greatest counter accepted so far, if any.
    pub fn greatest(&self) -> Option<u64> {
        (!self.empty).then_some(self.greatest)
    }

    /// Accepts `counter` (after the packet authenticated), or refuses it.
    pub fn update(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if self.empty || counter > self.greatest {
            let old_word = if self.empty { None } else { Some(self.greatest / 64) };
            let new_word = counter / 64;
            match old_word {
                Some(old) if new_word - old < WORD_COUNT as u64 => {
                    for index in old + 1..=new_word {
                        self.words[(index % WORD_COUNT as u64) as usize] = 0;
                    }
                }
                _ => self.words = [0; WORD_COUNT],
            }
            self.greatest = counter;
            self.empty = false;
        }
        let (word, bit) = Self::position(counter);
        self.words[word] |= bit;
        assert!(self.check(counter).is_err());
        Ok(())
    }

    /// Planted bug `ReplaySlideClearsLiveWord`: `update`, except that a slide into a new word
    /// also clears the word of the previous greatest counter (`old..=new` for `old + 1..=new`),
    /// so the counters just received in that word are forgotten and a late copy of one of them
    /// is accepted again.
    pub(crate) fn update_clearing_live_word(&mut self, counter: u64) -> Result<(), ReplayError> {
        let old_word = self.greatest().map(|greatest| greatest / 64);
        self.update(counter)?;
        if let Some(old) = old_word.filter(|old| counter / 64 > *old) {
            self.words[(old % WORD_COUNT as u64) as usize] = 0;
        }
        Ok(())
    }

    fn position(counter: u64) -> (usize, u64) {
        (((counter / 64) % WORD_COUNT as u64) as usize, 1u64 << (counter % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The model: every accepted counter, and the rule "above greatest, or within the window
    /// and never seen".
    fn model_accepts(seen: &BTreeSet<u64>, counter: u64) -> bool {
        match seen.last() {
            None => true,
            Some(&greatest) if counter > greatest => true,
            Some(&greatest) => greatest - counter <= WINDOW_LEN && !seen.contains(&counter),
        }
    }

    fn counters() -> impl Strategy<Value = Vec<u64>> {
        let near = (0u64..20_000).boxed();
        let far = prop_oneof![0u64..20_000, 0u64..100, u64::MAX - 100..=u64::MAX].boxed();
        let near = proptest::collection::vec(near, 1..400);
        prop_oneof![near, proptest::collection::vec(far, 1..100)]
    }

    proptest! {
        #[test]
        fn window_matches_model(counters in counters()) {
            let mut window = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            for counter in counters {
                let expected = model_accepts(&seen, counter);
                prop_assert_eq!(window.check(counter).is_ok(), expected, "check {}", counter);
                prop_assert_eq!(window.update(counter).is_ok(), expected, "update {}", counter);
                if expected {
                    seen.insert(counter);
                }
            }
        }
    }

    #[test]
    fn window_edges() {
        let mut window = ReplayWindow::default();
        window.update(WINDOW_LEN + 10).expect("first");
        assert_eq!(window.check(9), Err(ReplayError::TooOld));
        window.update(10).expect("exactly at the window edge");
        assert_eq!(window.update(10), Err(ReplayError::Duplicate));
        window.update(u64::MAX).expect("jump");
        assert_eq!(window.check(10), Err(ReplayError::TooOld));
    }

    /// The planted slide bug forgets the counters of the word it leaves; the window does not.
    #[test]
    fn planted_slide_forgets_the_word_it_leaves() {
        let mut correct = ReplayWindow::default();
        let mut planted = ReplayWindow::default();
        for counter in [60, 63, 64] {
            correct.update(counter).expect("fresh");
            planted.update_clearing_live_word(counter).expect("fresh");
        }
        assert_eq!(correct.check(63), Err(ReplayError::Duplicate));
        assert_eq!(planted.check(63), Ok(()), "the late copy of 63 gets through");
        assert_eq!(planted.check(64), Err(ReplayError::Duplicate), "the new word is intact");
    }
}
