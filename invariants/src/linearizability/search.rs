//! The Wing-Gong/Lowe search over one key's operations (see the parent module's doc for the
//! algorithm): a doubly linked list of call and return events, a stack of linearized
//! operations, and a memo table of explored (linearized set, register value) configurations.

use std::collections::BTreeMap;

use super::{Input, Operation, Output, Prepared};

/// The end of the event list.
const NIL: usize = usize::MAX;
/// The list's head sentinel; events are the indices after it.
const HEAD: usize = 0;

/// How the search over one key ended.
pub(super) enum Outcome {
    /// The list emptied: every operation was linearized.
    Linearizable,
    /// The search hit `steps_max` before deciding.
    Exhausted { steps: u64 },
    /// No linearization exists; the deepest dead end found.
    Stuck(Deepest),
}

/// The deepest dead end of a failed search: what the counterexample shows.
pub(super) struct Deepest {
    /// Operation indices in the order they were linearized.
    pub prefix: Vec<u32>,
    /// Operations that could go next at that point, in event order.
    pub candidates: Vec<u32>,
}

/// Searches for a linearization of `operations` (sorted by call time), in at most `steps_max`
/// steps.
pub(super) fn search(operations: &[Prepared<'_>], steps_max: u64) -> Outcome {
    assert!(operations.len() < u32::MAX as usize, "too many operations on one key");
    let call_nanos = |prepared: &Prepared<'_>| prepared.operation.call_nanos;
    let sorted = operations.windows(2).all(|pair| call_nanos(&pair[0]) <= call_nanos(&pair[1]));
    assert!(sorted, "operations are sorted by call time");
    let mut search = Search::new(operations);
    let (mut entry, mut fresh) = (HEAD, true);
    let mut steps = 0;
    while search.next[HEAD] != NIL {
        if steps == steps_max {
            return Outcome::Exhausted { steps };
        }
        steps += 1;
        let Some(next) = search.step(entry, fresh) else {
            return Outcome::Stuck(search.deepest.expect("recorded at every dead end"));
        };
        (entry, fresh) = (next, next == HEAD);
    }
    assert!(search.stack.len() == operations.len());
    Outcome::Linearizable
}

/// One linearized operation on the search stack.
struct Frame {
    /// Its call event.
    entry: usize,
    /// The register value before it.
    value: Option<u64>,
    /// How it was chosen, which says where to go on when it is undone.
    branch: Branch,
}

/// What the candidate reads allow at a fresh configuration (see `Search::scan_reads`).
enum Reads {
    /// This call event's read returned the current value: it goes next.
    Fits(usize),
    /// Some read can never be linearized here: backtrack.
    Hopeless,
    /// Some read is doomed (see `doomed_reads`): no order of the history can work.
    Impossible,
    /// Neither.
    Open,
}

/// What to do at a fresh configuration where no read fits (see `Search::plan`).
enum Plan {
    /// No completion exists: backtrack.
    Dead,
    /// Try this call event first, then walk the candidates.
    Prefer(usize),
}

/// How the search chose an operation to linearize.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Branch {
    /// A read that fit when its configuration was reached: the only branch tried there.
    Forced,
    /// The write tried first at its configuration, before walking the candidates in order.
    Preferred,
    /// Reached by walking the candidates in event order.
    Walked,
}

/// The search's state for one key.
struct Search<'a> {
    operations: &'a [Prepared<'a>],
    /// Event list links; index 0 is the head, events follow in time order.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per event: the operation it belongs to.
    operation: Vec<u32>,
    /// Per event: for a call, its return event; for a return, `NIL`.
    partner: Vec<usize>,
    /// Per operation: its call event.
    call_event: Vec<usize>,
    /// Per operation: a dense id of the value it writes or returned.
    value_id: Vec<u32>,
    /// Per value id: how many writes of it are not linearized.
    writes_left: Vec<u32>,
    /// Per operation: a read that no order of the history can satisfy (see `doomed_reads`).
    doomed: Vec<bool>,
    /// Linearized operations, in order.
    stack: Vec<Frame>,
    value: Option<u64>,
    linearized: Bitset,
    cache: Cache,
    deepest: Option<Deepest>,
}

impl<'a> Search<'a> {
    fn new(operations: &'a [Prepared<'a>]) -> Self {
        // Sort key: (infinite, time, return, operation); calls before returns at equal times.
        let mut events: Vec<(bool, u64, bool, u32)> = Vec::with_capacity(2 * operations.len());
        for (index, prepared) in (0u32..).zip(operations) {
            events.push((false, prepared.operation.call_nanos, false, index));
            let returned = prepared.return_nanos;
            assert!(returned.is_none_or(|returned| returned >= prepared.operation.call_nanos));
            events.push((returned.is_none(), returned.unwrap_or(0), true, index));
        }
        events.sort_unstable();
        let count = events.len() + 1;
        let mut search = Search {
            operations,
            next: (1..=count).map(|index| if index == count { NIL } else { index }).collect(),
            prev: (0..count).map(|index| index.wrapping_sub(1)).collect(),
            operation: vec![u32::MAX; count],
            partner: vec![NIL; count],
            call_event: vec![NIL; operations.len()],
            value_id: Vec::with_capacity(operations.len()),
            writes_left: Vec::new(),
            doomed: doomed_reads(operations),
            stack: Vec::with_capacity(operations.len()),
            value: None,
            linearized: Bitset::new(operations.len()),
            cache: Cache::default(),
            deepest: None,
        };
        for (position, &(_, _, is_return, index)) in events.iter().enumerate() {
            let event = position + 1;
            search.operation[event] = index;
            if is_return {
                search.partner[search.call_event[index as usize]] = event;
            } else {
                search.call_event[index as usize] = event;
            }
        }
        search.count_values();
        assert!(search.prev[HEAD] == NIL);
        search
    }

    /// Fills `value_id` and `writes_left`.
    fn count_values(&mut self) {
        let mut ids: BTreeMap<Option<u64>, u32> = BTreeMap::new();
        for prepared in self.operations {
            let value = match (&prepared.operation.input, &prepared.operation.output) {
                (Input::Write(written), _) => Some(*written),
                (Input::Read, Output::Read(read)) => *read,
                (Input::Read, Output::Unknown | Output::WriteOk) => unreachable!("asserted"),
            };
            let next_id = ids.len() as u32;
            let id = *ids.entry(value).or_insert(next_id);
            if id as usize == self.writes_left.len() {
                self.writes_left.push(0);
            }
            if matches!(prepared.operation.input, Input::Write(_)) {
                self.writes_left[id as usize] += 1;
            }
            self.value_id.push(id);
        }
    }

    /// One step from `entry`, or from the head at a configuration reached for the first time
    /// (`fresh`); returns the event to continue from (`HEAD` for a fresh configuration), or
    /// `None` when the search is exhausted without a linearization.
    fn step(&mut self, entry: usize, fresh: bool) -> Option<usize> {
        let entry = if fresh {
            match self.scan_reads() {
                Reads::Fits(read) if self.try_linearize(read, Branch::Forced) => return Some(HEAD),
                // The read leads to an explored, so failed, configuration: so does this one.
                Reads::Fits(_) | Reads::Hopeless => return self.backtrack(),
                Reads::Impossible => {
                    self.record_deepest();
                    return None;
                }
                Reads::Open => {}
            }
            match self.plan() {
                Plan::Dead => return self.backtrack(),
                Plan::Prefer(write) if self.try_linearize(write, Branch::Preferred) => {
                    return Some(HEAD);
                }
                Plan::Prefer(_) => {}
            }
            self.next[HEAD]
        } else {
            entry
        };
        if self.partner[entry] == NIL {
            self.backtrack()
        } else if self.try_linearize(entry, Branch::Walked) {
            Some(HEAD)
        } else {
            Some(self.next[entry])
        }
    }

    /// Scans the candidate reads: the first that returned the current value, or whether one
    /// never can return its value.
    ///
    /// Linearizing a read that fits first loses no linearization: in any order that puts it
    /// later, the register holds the same value at its place, and moving a read (which changes
    /// nothing) to a point inside its interval keeps the order valid. So it is the only branch
    /// worth trying, which spares the search from first guessing every pending write. A read of
    /// a value that the register does not hold and that no write left to linearize carries is
    /// hopeless: no completion exists. If it is doomed, no order of the history exists.
    fn scan_reads(&self) -> Reads {
        let mut entry = self.next[HEAD];
        let mut hopeless = false;
        while self.partner[entry] != NIL {
            let index = self.operation[entry] as usize;
            if let Output::Read(read) = self.operations[index].operation.output {
                if read == self.value {
                    return Reads::Fits(entry);
                }
                if self.doomed[index] {
                    return Reads::Impossible;
                }
                hopeless |= self.writes_left[self.value_id[index] as usize] == 0;
            }
            entry = self.next[entry];
        }
        if hopeless { Reads::Hopeless } else { Reads::Open }
    }

    /// What to do at a fresh configuration where no read fits, judged by the operation whose
    /// return event comes first (it must be linearized before any other returns).
    ///
    /// If it is a write, try it first. If it is a read of `v`, it needs a write of `v` first:
    /// try a candidate one; if there is none, no completion exists (only writes set the value,
    /// and only candidates can go before it). Trying a write first only orders the branches:
    /// the walk in event order still tries every candidate after it.
    fn plan(&self) -> Plan {
        let mut entry = self.next[HEAD];
        while self.partner[entry] != NIL {
            entry = self.next[entry];
        }
        let closing = self.operations[self.operation[entry] as usize].operation;
        let wanted = match (&closing.input, &closing.output) {
            (Input::Write(_), _) => {
                return Plan::Prefer(self.call_event[self.operation[entry] as usize]);
            }
            (Input::Read, Output::Read(Some(wanted))) => Input::Write(*wanted),
            (Input::Read, _) => return Plan::Dead,
        };
        let mut entry = self.next[HEAD];
        while self.partner[entry] != NIL {
            if self.operations[self.operation[entry] as usize].operation.input == wanted {
                return Plan::Prefer(entry);
            }
            entry = self.next[entry];
        }
        Plan::Dead
    }

    /// Linearizes the operation of call event `entry` now if the model allows it and the
    /// resulting configuration is new; returns whether it did.
    fn try_linearize(&mut self, entry: usize, branch: Branch) -> bool {
        let index = self.operation[entry];
        let Some(value) = apply(self.value, self.operations[index as usize].operation) else {
            return false;
        };
        self.linearized.flip(index);
        if !self.cache.insert(&self.linearized, value) {
            self.linearized.flip(index);
            return false;
        }
        if matches!(self.operations[index as usize].operation.input, Input::Write(_)) {
            self.writes_left[self.value_id[index as usize] as usize] -= 1;
        }
        self.stack.push(Frame { entry, value: self.value, branch });
        self.value = value;
        self.lift(entry);
        true
    }

    /// Undoes linearizations after a dead end: the last one, and while it was a forced read
    /// the one before it too (its configuration had no other branch). Returns the event to
    /// continue from (after a preferred write, the walk starts over from the head), or `None`
    /// if nothing is left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        self.record_deepest();
        loop {
            let frame = self.stack.pop()?;
            self.value = frame.value;
            let index = self.operation[frame.entry];
            self.linearized.flip(index);
            if matches!(self.operations[index as usize].operation.input, Input::Write(_)) {
                self.writes_left[self.value_id[index as usize] as usize] += 1;
            }
            self.unlift(frame.entry);
            match frame.branch {
                Branch::Forced => {}
                Branch::Preferred => return Some(self.next[HEAD]),
                Branch::Walked => return Some(self.next[frame.entry]),
            }
        }
    }

    /// Keeps the current configuration as the counterexample if it is the deepest dead end.
    fn record_deepest(&mut self) {
        let deeper = self.deepest.as_ref().is_none_or(|deepest| {
            let depth = deepest.prefix.len();
            self.stack.len() > depth
        });
        if deeper {
            self.deepest = Some(self.snapshot());
        }
    }

    /// The current prefix and the candidates to go next (call events before the first return).
    fn snapshot(&self) -> Deepest {
        let prefix = self.stack.iter().map(|frame| self.operation[frame.entry]).collect();
        let mut candidates = Vec::new();
        let mut entry = self.next[HEAD];
        while entry != NIL && self.partner[entry] != NIL {
            candidates.push(self.operation[entry]);
            entry = self.next[entry];
        }
        Deepest { prefix, candidates }
    }

    /// Unlinks call event `entry` and its return event.
    fn lift(&mut self, entry: usize) {
        let partner = self.partner[entry];
        let (before, after) = (self.prev[entry], self.next[entry]);
        self.next[before] = after;
        self.prev[after] = before;
        let (before, after) = (self.prev[partner], self.next[partner]);
        self.next[before] = after;
        if after != NIL {
            self.prev[after] = before;
        }
    }

    /// Relinks call event `entry` and its return event; the exact inverse of `lift`.
    fn unlift(&mut self, entry: usize) {
        let partner = self.partner[entry];
        self.next[self.prev[partner]] = partner;
        if self.next[partner] != NIL {
            self.prev[self.next[partner]] = partner;
        }
        self.prev[self.next[entry]] = entry;
        self.next[self.prev[entry]] = entry;
    }
}

/// Per operation: whether it is a read that no order of the history can satisfy, decided from
/// the intervals alone. A read of `v` is doomed if no write carries `v`, or if some write was
/// called after every write of `v` returned and itself returned before the read was called:
/// that write separates the read from every write of `v`. (A read of absent is doomed by any
/// write that returned before it was called.) Catching these up front spares the search from
/// exhausting every order of the history before it, which is what refuting a stale read costs.
fn doomed_reads(operations: &[Prepared<'_>]) -> Vec<bool> {
    // Writes by call time, and the earliest return among the writes from each on.
    let mut writes: Vec<(u64, Option<u64>)> = operations
        .iter()
        .filter(|prepared| matches!(prepared.operation.input, Input::Write(_)))
        .map(|prepared| (prepared.operation.call_nanos, prepared.return_nanos))
        .collect();
    writes.sort_unstable();
    let mut earliest_returns: Vec<Option<u64>> = vec![None; writes.len() + 1];
    for index in (0..writes.len()).rev() {
        let returned = writes[index].1;
        earliest_returns[index] = match (returned, earliest_returns[index + 1]) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    // Per value written: when its last write returned (`None`: one never did).
    let mut last_returns: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for prepared in operations {
        if let Input::Write(value) = prepared.operation.input {
            let last = last_returns.entry(value).or_insert(Some(0));
            *last = last.zip(prepared.return_nanos).map(|(a, b)| a.max(b));
        }
    }
    let doomed = |prepared: &Prepared<'_>| {
        let Output::Read(read) = prepared.operation.output else { return false };
        // The first write called after every write of the value returned.
        let first_after = match read.map(|value| last_returns.get(&value)) {
            Some(None) => return true,
            Some(Some(None)) => return false,
            Some(Some(Some(last))) => writes.partition_point(|&(call, _)| call <= *last),
            None => 0,
        };
        earliest_returns[first_after].is_some_and(|ret| ret < prepared.operation.call_nanos)
    };
    operations.iter().map(doomed).collect()
}

/// The register model: the value after `operation` from `value`, or `None` if `operation`
/// cannot take effect now (a read that returned something else).
pub(super) fn apply(value: Option<u64>, operation: &Operation) -> Option<Option<u64>> {
    match (&operation.input, &operation.output) {
        (Input::Write(written), _) => Some(Some(*written)),
        (Input::Read, Output::Read(read)) => (*read == value).then_some(value),
        (Input::Read, _) => unreachable!("unknown reads are dropped, others are asserted"),
    }
}

/// The set of linearized operations, with a hash kept up to date incrementally (the xor of a
/// per-operation hash), so a memo lookup costs no pass over the words unless hashes collide.
struct Bitset {
    words: Box<[u64]>,
    hash: u64,
}

impl Bitset {
    fn new(bit_count: usize) -> Self {
        Bitset { words: vec![0; bit_count.div_ceil(64)].into_boxed_slice(), hash: 0 }
    }

    fn flip(&mut self, bit: u32) {
        self.words[(bit / 64) as usize] ^= 1 << (bit % 64);
        self.hash ^= mix(u64::from(bit));
    }

    /// The set in the memo's compact form: the count of leading all-ones words, then the words
    /// from the first that is not all ones to the last that is not zero. Operations are
    /// numbered in call order and the old ones are all linearized, so this stays as short as
    /// the window of concurrent operations instead of growing with the history.
    fn compact(&self) -> (u32, &[u64]) {
        let full = self.words.iter().position(|&word| word != u64::MAX).unwrap_or(self.words.len());
        let end = self.words.iter().rposition(|&word| word != 0).map_or(0, |last| last + 1);
        (full as u32, &self.words[full..end.max(full)])
    }
}

/// SplitMix64's finalizer: a fixed, well-spread 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One explored configuration: hash, the linearized set in compact form, the register value.
struct Explored {
    hash: u64,
    full_words: u32,
    tail_words: Box<[u64]>,
    value: Option<u64>,
}

/// The memo of explored configurations: an insert-only open-addressing hash set with linear
/// probing and a fixed hash. Never iterated, so its layout cannot reach any output.
#[derive(Default)]
struct Cache {
    /// Indices into `entries`, `u32::MAX` when empty; length a power of two (or zero).
    slots: Vec<u32>,
    entries: Vec<Explored>,
}

impl Cache {
    /// Inserts the configuration; returns false if it was already present.
    fn insert(&mut self, linearized: &Bitset, value: Option<u64>) -> bool {
        let hash = linearized.hash ^ mix(value.map_or(u64::MAX, |value| mix(value ^ 0x5eed)));
        let (full_words, tail_words) = linearized.compact();
        if 2 * (self.entries.len() + 1) > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut slot = (hash as usize) & mask;
        while let Some(known) = self.entries.get(self.slots[slot] as usize) {
            let same = known.hash == hash && known.value == value;
            if same && known.full_words == full_words && *known.tail_words == *tail_words {
                return false;
            }
            slot = (slot + 1) & mask;
        }
        assert!(self.entries.len() < (u32::MAX - 1) as usize, "memo table full");
        self.slots[slot] = self.entries.len() as u32;
        let tail_words = tail_words.into();
        self.entries.push(Explored { hash, full_words, tail_words, value });
        true
    }

    /// Doubles the table (at least 1024 slots) and reinserts every entry by its stored hash.
    fn grow(&mut self) {
        let slot_count = (2 * self.slots.len()).max(1024);
        let mask = slot_count - 1;
        self.slots = vec![u32::MAX; slot_count];
        for (index, explored) in (0u32..).zip(&self.entries) {
            let mut slot = (explored.hash as usize) & mask;
            while self.slots[slot] != u32::MAX {
                slot = (slot + 1) & mask;
            }
            self.slots[slot] = index;
        }
    }
}
