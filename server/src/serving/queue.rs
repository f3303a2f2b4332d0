//! The queue of one deployment and the rule that cuts batches from it: what a request
//! brings ([`Input`]), how it waits ([`Entry`]) and which requests leave together
//! ([`State::next_batch`]). Plain data and methods, unit-tested without channels or
//! clocks; the batcher's core ([`super::batcher`]) owns one.

use std::collections::VecDeque;
use std::time::Duration;

use ndarray::{Array2, ArrayView2};
use prism_kernels::encoder::Tokens;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::BatchError;
use crate::store::Lease;

/// What a request gets back: its rows of the model's output.
pub type Reply = Result<Array2<f32>, BatchError>;

/// A request's input rows: its own matrix, or an FP32 object of the store read in
/// place (the lease keeps the object from being spilled or freed while queued).
pub enum Rows {
    Owned(Array2<f32>),
    Object { lease: Lease, rows: usize, cols: usize },
}

impl Rows {
    pub fn nrows(&self) -> usize {
        match self {
            Rows::Owned(a) => a.nrows(),
            Rows::Object { rows, .. } => *rows,
        }
    }

    pub fn view(&self) -> ArrayView2<'_, f32> {
        match self {
            Rows::Owned(a) => a.view(),
            Rows::Object { lease, rows, cols } => {
                let values: &[f32] = bytemuck::try_cast_slice(lease.bytes())
                    .expect("FP32 objects are aligned and whole. This is a bug.");
                ArrayView2::from_shape((*rows, *cols), values).expect("shape checked against the object")
            }
        }
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Rows::Owned(_) => "Owned",
            Rows::Object { .. } => "Object",
        };
        write!(f, "Rows::{kind}({} rows)", self.nrows())
    }
}

impl From<Array2<f32>> for Rows {
    fn from(a: Array2<f32>) -> Self {
        Rows::Owned(a)
    }
}

/// What one request brings to a batch: rows of numbers, or an encoder's tokenized texts.
#[derive(Debug)]
pub enum Input {
    Rows(Rows),
    Tokens(Tokens),
}

impl Input {
    /// Rows, or texts: what `max_batch_size` counts.
    pub fn rows(&self) -> usize {
        match self {
            Input::Rows(r) => r.nrows(),
            Input::Tokens(t) => t.texts(),
        }
    }

    /// The token count of its longest text (0 for rows): with the batch's texts, what
    /// `max_batch_tokens` counts.
    pub fn longest(&self) -> usize {
        match self {
            Input::Rows(_) => 0,
            Input::Tokens(t) => t.lengths.iter().copied().max().unwrap_or(0),
        }
    }
}

impl From<Rows> for Input {
    fn from(r: Rows) -> Self {
        Input::Rows(r)
    }
}

impl From<Array2<f32>> for Input {
    fn from(a: Array2<f32>) -> Self {
        Input::Rows(Rows::Owned(a))
    }
}

impl From<Tokens> for Input {
    fn from(t: Tokens) -> Self {
        Input::Tokens(t)
    }
}

/// One request waiting for a batch.
pub struct Entry {
    pub input: Input,
    pub reply: oneshot::Sender<Reply>,
    pub enqueued: Instant,
    /// Replicas that crashed running it: past `max_retries`, it fails.
    pub crashes: u32,
}

impl Entry {
    pub fn rows(&self) -> usize {
        self.input.rows()
    }
}

/// Requests that run together.
pub struct Batch {
    pub entries: Vec<Entry>,
    pub rows: usize,
}

/// Queued requests a batch is chosen from when the queue holds more than one batch: the
/// choice stays cheap however long the queue grows.
const GROUPING_LOOKAHEAD: usize = 1024;

/// The queue of one deployment and the rule that cuts batches from it.
pub struct State {
    queue: VecDeque<Entry>,
    rows: usize,
    max_batch_size: usize,
    /// Padded tokens a batch of texts may hold (texts × its longest text).
    max_batch_tokens: usize,
    window: Duration,
}

impl State {
    pub fn new(max_batch_size: usize, max_batch_tokens: usize, window: Duration) -> Self {
        State {
            queue: VecDeque::new(),
            rows: 0,
            max_batch_size,
            max_batch_tokens,
            window,
        }
    }

    pub fn push(&mut self, entry: Entry) {
        self.rows += entry.rows();
        self.queue.push_back(entry);
    }

    /// Puts a request back at the front (its replica crashed): it goes first.
    pub fn push_front(&mut self, entry: Entry) {
        self.rows += entry.rows();
        self.queue.push_front(entry);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Removes the requests whose client has gone (the handler was dropped); returns how
    /// many.
    pub fn drop_cancelled(&mut self) -> usize {
        let before = self.queue.len();
        self.queue.retain(|e| !e.reply.is_closed());
        self.rows = self.queue.iter().map(Entry::rows).sum();
        before - self.queue.len()
    }

    /// Padded tokens the whole queue would make as one batch (0 for rows).
    fn queued_tokens(&self) -> usize {
        let longest = self.queue.iter().map(|e| e.input.longest()).max().unwrap_or(0);
        self.rows * longest
    }

    /// When the oldest waiting request's window closes.
    pub fn deadline(&self) -> Option<Instant> {
        self.queue.front().map(|e| e.enqueued + self.window)
    }

    /// The batch that may leave at `now`, if any. `replica_idle`: some replica has
    /// nothing to do, so waiting would only add latency.
    pub fn next_batch(&mut self, now: Instant, replica_idle: bool) -> Option<Batch> {
        let deadline = self.deadline()?;
        // Only a queue of texts has tokens to count (a deployment takes one kind).
        let texts = self.queue.front().is_some_and(|e| matches!(e.input, Input::Tokens(_)));
        let tokens = if texts { self.queued_tokens() } else { 0 };
        let full = self.rows >= self.max_batch_size || tokens >= self.max_batch_tokens;
        if !(full || replica_idle || now >= deadline) {
            return None;
        }
        let fits_whole = self.rows <= self.max_batch_size && tokens <= self.max_batch_tokens;
        let batch = if fits_whole && self.queue.iter().all(|e| e.crashes == 0) {
            Batch {
                rows: self.rows,
                entries: self.queue.drain(..).collect(),
            }
        } else {
            self.grouped_batch()
        };
        self.rows -= batch.rows;
        Some(batch)
    }

    /// A batch cut from a queue that does not fit in one. The oldest request always goes
    /// (so none waits for ever); the others join it closest in length first (the longest
    /// text sets the padding of every row), each that still fits `max_batch_size` and
    /// `max_batch_tokens` (so none waits behind a batch it could have joined). A request
    /// whose replica crashed runs alone: one that crashes the model takes no other request
    /// with it. Rows have no length: they join in arrival order.
    fn grouped_batch(&mut self) -> Batch {
        let seed = self.queue.front().expect("next_batch checked the queue");
        let (mut rows, mut widest) = (seed.rows(), seed.input.longest());
        let mut picked = vec![false; self.queue.len()];
        picked[0] = true;
        if seed.crashes == 0 {
            let mut candidates: Vec<(usize, usize)> = self
                .queue
                .iter()
                .enumerate()
                .skip(1)
                .take(GROUPING_LOOKAHEAD)
                .filter(|(_, e)| e.crashes == 0)
                .map(|(i, e)| (e.input.longest().abs_diff(widest), i))
                .collect();
            // Stable: equal distances keep arrival order.
            candidates.sort_by_key(|&(distance, _)| distance);
            for (_, i) in candidates {
                let e = &self.queue[i];
                let (r, w) = (rows + e.rows(), widest.max(e.input.longest()));
                if r <= self.max_batch_size && r * w <= self.max_batch_tokens {
                    (rows, widest) = (r, w);
                    picked[i] = true;
                }
                if rows == self.max_batch_size {
                    break;
                }
            }
        }
        let mut batch = Batch {
            entries: Vec::new(),
            rows,
        };
        let queue = std::mem::take(&mut self.queue);
        for (entry, picked) in queue.into_iter().zip(picked) {
            if picked {
                batch.entries.push(entry);
            } else {
                self.queue.push_back(entry);
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rows: usize, at: Instant) -> (Entry, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (
            Entry {
                input: Array2::zeros((rows, 1)).into(),
                reply,
                enqueued: at,
                crashes: 0,
            },
            rx,
        )
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_batch_waits_for_its_window_while_replicas_are_busy() {
        let t0 = Instant::now();
        let mut s = State::new(4, usize::MAX, 2 * MS);
        let _keep: Vec<_> = (0..3)
            .map(|i| {
                let (e, rx) = entry(1, t0 + i * MS / 2);
                s.push(e);
                rx
            })
            .collect();
        assert!(
            s.next_batch(t0 + MS, false).is_none(),
            "3 of 4 rows, window open, no idle replica"
        );
        let b = s
            .next_batch(t0 + 2 * MS, false)
            .expect("the window of the first request closed");
        assert_eq!((b.entries.len(), b.rows), (3, 3));
        assert!(s.is_empty() && s.deadline().is_none());
    }

    #[test]
    fn a_full_batch_leaves_at_once_and_never_exceeds_max_rows() {
        let t0 = Instant::now();
        let mut s = State::new(4, usize::MAX, 100 * MS);
        let _keep: Vec<_> = [2, 1, 2, 3]
            .iter()
            .map(|&r| {
                let (e, rx) = entry(r, t0);
                s.push(e);
                rx
            })
            .collect();
        let b = s.next_batch(t0, false).expect("8 rows waiting, max 4");
        assert_eq!(b.rows, 3, "2 + 1 fit, the next 2 would make 5");
        let b = s.next_batch(t0, false).expect("5 rows still waiting");
        assert_eq!(b.rows, 2);
        assert!(s.next_batch(t0, false).is_none(), "3 rows: not full, window open");
        assert_eq!(s.next_batch(t0, true).unwrap().rows, 3);
    }

    #[test]
    fn an_idle_replica_takes_a_lone_request_without_waiting() {
        let t0 = Instant::now();
        let mut s = State::new(32, usize::MAX, 2 * MS);
        let (e, _rx) = entry(1, t0);
        s.push(e);
        assert_eq!(s.next_batch(t0, true).unwrap().rows, 1);
    }

    #[test]
    fn a_request_whose_replica_crashed_runs_alone() {
        let now = Instant::now();
        let mut q = State::new(64, usize::MAX, Duration::from_millis(5));
        let (mut crashed, _a) = entry(1, now);
        crashed.crashes = 1;
        let keep: Vec<_> = (0..3).map(|_| entry(1, now)).collect();
        q.push_front(crashed);
        for (e, _) in keep {
            q.push(e);
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| q.next_batch(now, true))
            .map(|b| b.entries.len())
            .collect();
        assert_eq!(sizes, vec![1, 3], "the crashed one alone, then the others together");
    }

    #[test]
    fn requests_whose_client_left_are_dropped_before_batching() {
        let t0 = Instant::now();
        let mut s = State::new(8, usize::MAX, MS);
        let (a, rx_a) = entry(2, t0);
        let (b, _rx_b) = entry(3, t0);
        s.push(a);
        s.push(b);
        drop(rx_a);
        assert_eq!(s.drop_cancelled(), 1);
        assert_eq!(s.next_batch(t0 + MS, false).unwrap().rows, 3);
    }

    fn texts(lengths: &[usize], at: Instant) -> (Entry, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let total: usize = lengths.iter().sum();
        let tokens = Tokens {
            ids: vec![0; total],
            type_ids: vec![0; total],
            lengths: lengths.to_vec(),
        };
        (
            Entry {
                input: tokens.into(),
                reply,
                enqueued: at,
                crashes: 0,
            },
            rx,
        )
    }

    #[test]
    fn a_batch_of_texts_is_bounded_by_its_padded_tokens() {
        let t0 = Instant::now();
        // 10 texts at most, 40 padded tokens at most (texts × the longest).
        let mut s = State::new(10, 40, 100 * MS);
        let _keep: Vec<_> = [&[5, 8][..], &[10], &[3, 3, 3], &[20, 2]]
            .iter()
            .map(|l| {
                let (e, rx) = texts(l, t0);
                s.push(e);
                rx
            })
            .collect();
        let b = s.next_batch(t0, true).unwrap();
        assert_eq!(
            b.rows, 3,
            "2 texts of ≤ 8, then one of 10: 3 × 10 = 30 ≤ 40; adding 3 more makes 60"
        );
        let b = s.next_batch(t0, true).unwrap();
        assert_eq!(
            b.rows, 3,
            "3 × 3 = 9; the next request's 20-token text would make 5 × 20 = 100"
        );
        let b = s.next_batch(t0, true).unwrap();
        assert_eq!(b.rows, 2, "alone, 2 × 20 = 40 fits");
        assert!(s.is_empty());
        // Enough waiting tokens make a full batch, which leaves before its window.
        let (e, _rx) = texts(&[30, 30], t0);
        s.push(e);
        assert!(s.next_batch(t0, false).is_some(), "60 padded tokens ≥ 40: full");
    }

    /// Queues one request of one text of each length.
    fn push_texts(s: &mut State, lengths: &[usize], at: Instant) -> Vec<oneshot::Receiver<Reply>> {
        lengths
            .iter()
            .map(|&l| {
                let (e, rx) = texts(&[l], at);
                s.push(e);
                rx
            })
            .collect()
    }

    fn longest_of_each(b: &Batch) -> Vec<usize> {
        b.entries.iter().map(|e| e.input.longest()).collect()
    }

    #[test]
    fn texts_of_similar_lengths_are_batched_together() {
        let t0 = Instant::now();
        let mut s = State::new(3, 1000, 100 * MS);
        let _keep = push_texts(&mut s, &[10, 100, 12, 98, 11, 101], t0);
        let a = s.next_batch(t0, true).unwrap();
        let b = s.next_batch(t0, true).unwrap();
        assert_eq!(
            longest_of_each(&a),
            vec![10, 12, 11],
            "the oldest, then the closest in length"
        );
        assert_eq!(longest_of_each(&b), vec![100, 98, 101]);
        // 3 × 12 + 3 × 101 padded tokens, where arrival order makes 3 × 100 + 3 × 101.
        assert!(s.is_empty());
    }

    #[test]
    fn a_text_that_fits_is_not_held_behind_one_that_does_not() {
        let t0 = Instant::now();
        let mut s = State::new(10, 40, 100 * MS);
        let _keep = push_texts(&mut s, &[8, 30, 9], t0);
        let a = s.next_batch(t0, true).unwrap();
        assert_eq!(
            longest_of_each(&a),
            vec![8, 9],
            "2 × 9 fits 40; the 30 would make 3 × 30"
        );
        assert_eq!(longest_of_each(&s.next_batch(t0, true).unwrap()), vec![30]);
    }

    #[test]
    fn the_oldest_text_goes_first_however_far_it_is_from_the_rest() {
        let t0 = Instant::now();
        let mut s = State::new(2, 1000, 100 * MS);
        let _keep = push_texts(&mut s, &[50, 10, 10, 10, 10], t0);
        assert_eq!(longest_of_each(&s.next_batch(t0, true).unwrap()), vec![50, 10]);
    }

    #[test]
    fn a_crashed_text_runs_alone_and_the_rest_group_without_it() {
        let t0 = Instant::now();
        let mut s = State::new(2, 1000, 100 * MS);
        let mut keep = Vec::new();
        for (l, crashes) in [(10, 0), (11, 1), (12, 0), (13, 0)] {
            let (mut e, rx) = texts(&[l], t0);
            e.crashes = crashes;
            s.push(e);
            keep.push(rx);
        }
        let batches: Vec<_> = std::iter::from_fn(|| s.next_batch(t0, true))
            .map(|b| longest_of_each(&b))
            .collect();
        assert_eq!(batches, vec![vec![10, 12], vec![11], vec![13]]);
    }
}
