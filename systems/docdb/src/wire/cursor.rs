//! The server-side cursor table: query results not yet handed out, by cursor id, for `getMore`
//! and `killCursors`. Results are materialised at `find` time (docdb's queries return them in
//! order), so a cursor is a queue of documents and needs no open transaction.
//!
//! Invariant: at most `cursor_count_max` cursors are open; opening one more closes the oldest
//! (the smallest id), as a client that abandons cursors must not grow the table.

use std::collections::{BTreeMap, VecDeque};

use bson::Document;

/// MongoDB's default first batch.
pub const FIRST_BATCH_DEFAULT: usize = 101;
/// Bytes of documents in one batch, so a reply stays under the 16 MiB document limit.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024 - 64 * 1024;

/// One open cursor.
#[derive(Debug)]
struct OpenCursor {
    namespace: String,
    remaining: VecDeque<Document>,
}

/// Open cursors by id.
#[derive(Debug)]
pub struct Cursors {
    // Invariant: `open.len() <= cursor_count_max`.
    open: BTreeMap<i64, OpenCursor>,
    next_id: i64,
    cursor_count_max: usize,
}

impl Cursors {
    /// An empty table holding at most `cursor_count_max` cursors.
    pub fn new(cursor_count_max: usize) -> Cursors {
        assert!(cursor_count_max > 0);
        Cursors { open: BTreeMap::new(), next_id: 1, cursor_count_max }
    }

    /// Takes the first batch of `documents`; keeps the rest under a new id (0 when none is
    /// left or `single_batch`). `batch_size` 0 means MongoDB's default of 101.
    pub fn open(
        &mut self,
        namespace: &str,
        documents: Vec<Document>,
        batch_size: usize,
        single_batch: bool,
    ) -> (Vec<Document>, i64) {
        let mut remaining: VecDeque<Document> = documents.into();
        let size = if batch_size == 0 { FIRST_BATCH_DEFAULT } else { batch_size };
        let batch = take_batch(&mut remaining, size);
        if remaining.is_empty() || single_batch {
            return (batch, 0);
        }
        while self.open.len() >= self.cursor_count_max {
            self.open.pop_first();
        }
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.open.insert(id, OpenCursor { namespace: namespace.to_string(), remaining });
        assert!(self.open.len() <= self.cursor_count_max);
        (batch, id)
    }

    /// The next batch of cursor `id` and its namespace, and whether the cursor is still open
    /// afterwards; `None` if there is no such cursor. `batch_size` 0 means the rest.
    pub fn next_batch(
        &mut self,
        id: i64,
        batch_size: usize,
    ) -> Option<(String, Vec<Document>, bool)> {
        let cursor = self.open.get_mut(&id)?;
        let size = if batch_size == 0 { usize::MAX } else { batch_size };
        let batch = take_batch(&mut cursor.remaining, size);
        let namespace = cursor.namespace.clone();
        let still_open = !cursor.remaining.is_empty();
        if !still_open {
            self.open.remove(&id);
        }
        Some((namespace, batch, still_open))
    }

    /// Closes cursor `id`; whether it was open.
    pub fn kill(&mut self, id: i64) -> bool {
        self.open.remove(&id).is_some()
    }

    /// Open cursors.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no cursor is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Up to `size` documents from the front, fewer if they would pass `BATCH_BYTES_MAX` (but at
/// least one, so a cursor always makes progress).
fn take_batch(remaining: &mut VecDeque<Document>, size: usize) -> Vec<Document> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while batch.len() < size {
        let Some(next) = remaining.front() else { break };
        let next_bytes = next.to_vec().map(|encoded| encoded.len()).unwrap_or(0);
        if !batch.is_empty() && bytes + next_bytes > BATCH_BYTES_MAX {
            break;
        }
        bytes += next_bytes;
        batch.extend(remaining.pop_front());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn documents(count: i32) -> Vec<Document> {
        (0..count).map(|i| doc! {"_id": i}).collect()
    }

    #[test]
    fn batches_then_closes() {
        let mut cursors = Cursors::new(4);
        let (first, id) = cursors.open("d.c", documents(5), 2, false);
        assert_eq!((first.len(), cursors.len()), (2, 1));
        assert_ne!(id, 0);
        let (_, second, open) = cursors.next_batch(id, 2).expect("open");
        assert_eq!((second.len(), open), (2, true));
        let (_, third, open) = cursors.next_batch(id, 2).expect("open");
        assert_eq!((third.len(), open), (1, false));
        assert!(cursors.next_batch(id, 2).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_oldest() {
        let mut cursors = Cursors::new(2);
        let ids: Vec<i64> = (0..3).map(|_| cursors.open("d.c", documents(3), 1, false).1).collect();
        assert_eq!(cursors.len(), 2);
        assert!(!cursors.kill(ids[0]));
        assert!(cursors.kill(ids[2]));
        let (_, id) = cursors.open("d.c", documents(3), 5, false);
        assert_eq!(id, 0, "a query that fits one batch opens no cursor");
    }
}
