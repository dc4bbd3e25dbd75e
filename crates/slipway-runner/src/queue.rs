//! The per-stage event queue between the engine's (synchronous) sink and the uploader.
//!
//! The sink [`EventQueue::push`]es items in the order the engine emits them; the uploader
//! takes them out with [`EventQueue::next_batch`], which turns the oldest items into one
//! batch of [`StageEvent`]s: consecutive lines of one step become one [`StageEvent::Log`],
//! numbered per step from 0. A batch lingers for [`Limits::linger`] after its first item
//! (unless it is full or the queue closes first), so a short step's start, lines and end
//! travel together, and a stage that ends within the linger sends all its events with its
//! end (see [`Batch::last`]). Numbers are given when a batch is built, and a built batch is
//! never changed (the uploader resends it as it is), so the numbers the server sees are
//! contiguous whatever happens to the queue.
//!
//! Pushing never blocks and never fails. The queue is bounded by [`Limits::max_lines`] and
//! [`Limits::max_bytes`]: only when the server has been unreachable long enough for that
//! much output to pile up, lines from the *middle* of the queue are dropped (the oldest half
//! is kept, since it is next to go out, and so are the newest lines) and replaced by one
//! marker line per run of dropped lines of a step: `… N lines dropped while the server was
//! unreachable …`. Step starts and ends are never dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use slipway_engine::Status;
use tokio::sync::Notify;

use crate::protocol::{LogLine, StageEvent};

/// What the engine said, before it is numbered and batched.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    Started {
        step: String,
        time: i64,
    },
    Line {
        step: String,
        line: LogLine,
    },
    /// Stands for `count` lines of `step` that were dropped; sent as one marker line.
    Dropped {
        step: String,
        count: u64,
        time: i64,
    },
    Finished {
        step: String,
        status: Status,
        exit_code: Option<i64>,
        time: i64,
    },
    /// An image a step pushed; never dropped, like starts and ends.
    Artifact {
        step: String,
        image: String,
        tags: Vec<String>,
        digest: String,
    },
}

/// Roughly what an item adds to a JSON batch, for the byte limits.
fn size(item: &Item) -> usize {
    match item {
        Item::Line { line, .. } => line.line.len() + 32,
        _ => MARKER_SIZE,
    }
}

/// [`size`] of anything but a line.
const MARKER_SIZE: usize = 96;

fn is_line(item: &Item) -> bool {
    matches!(item, Item::Line { .. } | Item::Dropped { .. })
}

pub(crate) fn dropped_marker(count: u64) -> String {
    format!("… {count} lines dropped while the server was unreachable …")
}

/// How much the queue buffers and how much one batch carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_lines: usize,
    pub max_bytes: usize,
    pub batch_lines: usize,
    pub batch_bytes: usize,
    /// How long a batch waits after its first item for more to join it: the price is live
    /// lines arriving this much later, the gain one request where a short step would take
    /// several.
    pub linger: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // Bounded by bytes first: a step can print faster than one uploader ships, and
            // 200,000 lines of a fast step must not be dropped while the server is reachable.
            max_lines: 1_000_000,
            max_bytes: 64 << 20,
            batch_lines: 5_000,
            batch_bytes: 512 << 10,
            linger: Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// Lines (and markers) in `items`.
    lines: usize,
    bytes: usize,
    /// No more items will come (the engine returned), or the stage was abandoned.
    closed: bool,
    /// Lines dropped so far, over the stage's life.
    dropped: u64,
}

/// Events taken from the queue, to be sent as one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub events: Vec<StageEvent>,
    /// The queue is closed and this was the rest of it: nothing comes after.
    pub last: bool,
}

#[derive(Debug)]
pub(crate) struct EventQueue {
    state: Mutex<State>,
    notify: Notify,
    limits: Limits,
}

impl EventQueue {
    pub(crate) fn new(limits: Limits) -> EventQueue {
        EventQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends an item (ignored once the queue is closed). Never blocks for long.
    pub(crate) fn push(&self, item: Item) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.bytes += size(&item);
            if is_line(&item) {
                state.lines += 1;
            }
            state.items.push_back(item);
            if state.lines > self.limits.max_lines || state.bytes > self.limits.max_bytes {
                compact(&mut state, &self.limits);
            }
        }
        self.notify.notify_one();
    }

    /// No more items: [`EventQueue::next_batch`] returns `None` once the rest is taken.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Closes the queue and forgets what it holds (the stage was abandoned).
    pub(crate) fn discard(&self) {
        {
            let mut state = self.lock();
            state.closed = true;
            state.items.clear();
            state.lines = 0;
            state.bytes = 0;
        }
        self.notify.notify_one();
    }

    /// How many lines were dropped to keep within the limits.
    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Waits until something is queued, lingers (see [`Limits::linger`]), and takes the
    /// oldest items as one batch, numbering log lines with `seqs` (step -> next number).
    /// `None` when closed and empty.
    pub(crate) async fn next_batch(&self, seqs: &mut HashMap<String, u64>) -> Option<Batch> {
        loop {
            // Registered before looking, so a push in between is not missed.
            let notified = self.notify.notified();
            {
                let state = self.lock();
                if !state.items.is_empty() {
                    break;
                }
                if state.closed {
                    // Let any other waiter see the end too.
                    self.notify.notify_one();
                    return None;
                }
            }
            notified.await;
        }
        let deadline = tokio::time::Instant::now() + self.limits.linger;
        loop {
            let notified = self.notify.notified();
            {
                let state = self.lock();
                if state.closed || self.is_full(&state) {
                    break;
                }
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let mut state = self.lock();
        if state.items.is_empty() {
            // Discarded while lingering.
            self.notify.notify_one();
            return None;
        }
        let events = self.take_batch(&mut state, seqs);
        Some(Batch {
            events,
            last: state.closed && state.items.is_empty(),
        })
    }

    /// Whether the queue holds a whole batch already.
    fn is_full(&self, state: &State) -> bool {
        state.lines >= self.limits.batch_lines || state.bytes >= self.limits.batch_bytes
    }

    fn take_batch(&self, state: &mut State, seqs: &mut HashMap<String, u64>) -> Vec<StageEvent> {
        let mut events: Vec<StageEvent> = Vec::new();
        let (mut lines, mut bytes) = (0, 0);
        while let Some(item) = state.items.front() {
            let item_size = size(item);
            let item_is_line = is_line(item);
            if !events.is_empty()
                && ((item_is_line && lines >= self.limits.batch_lines)
                    || bytes + item_size > self.limits.batch_bytes)
            {
                break;
            }
            let Some(item) = state.items.pop_front() else {
                break;
            };
            state.bytes -= item_size;
            bytes += item_size;
            if item_is_line {
                state.lines -= 1;
                lines += 1;
            }
            match item {
                Item::Started { step, time } => events.push(StageEvent::StepStarted { step, time }),
                Item::Finished {
                    step,
                    status,
                    exit_code,
                    time,
                } => events.push(StageEvent::StepFinished {
                    step,
                    status,
                    exit_code,
                    time,
                    error: None,
                }),
                Item::Artifact {
                    step,
                    image,
                    tags,
                    digest,
                } => events.push(StageEvent::Artifact {
                    step,
                    image,
                    tags,
                    digest,
                }),
                Item::Line { step, line } => append_line(&mut events, seqs, step, line),
                Item::Dropped { step, count, time } => {
                    let line = LogLine {
                        time,
                        line: dropped_marker(count),
                    };
                    append_line(&mut events, seqs, step, line);
                }
            }
        }
        events
    }
}

/// Adds a line to the last event if that is a `Log` of the same step, else starts one.
fn append_line(
    events: &mut Vec<StageEvent>,
    seqs: &mut HashMap<String, u64>,
    step: String,
    line: LogLine,
) {
    // Looked up before inserting: an entry per line would allocate the step name each time.
    let next = match seqs.get_mut(&step) {
        Some(next) => next,
        None => seqs.entry(step.clone()).or_insert(0),
    };
    *next += 1;
    if let Some(StageEvent::Log {
        step: last, lines, ..
    }) = events.last_mut()
        && *last == step
    {
        lines.push(line);
        return;
    }
    events.push(StageEvent::Log {
        step,
        first_seq: *next - 1,
        lines: vec![line],
    });
}

/// Brings the queue back to 3/4 of its limits by dropping lines that follow its oldest
/// half, oldest first, leaving markers in their place. Dropping a quarter at a time keeps
/// the cost per pushed line constant.
fn compact(state: &mut State, limits: &Limits) {
    let keep_lines = limits.max_lines / 2;
    let keep_bytes = limits.max_bytes / 2;
    let target_lines = limits.max_lines / 4 * 3;
    let target_bytes = limits.max_bytes / 4 * 3;

    let old = std::mem::take(&mut state.items);
    let mut out = VecDeque::with_capacity(old.len());
    let (mut kept_lines, mut kept_bytes) = (0, 0);
    // The marker being built: (step, count, time of its first dropped line).
    let mut marker: Option<(String, u64, i64)> = None;
    let mut dropped = 0u64;

    let flush =
        |marker: &mut Option<(String, u64, i64)>, out: &mut VecDeque<Item>, state: &mut State| {
            if let Some((step, count, time)) = marker.take() {
                let item = Item::Dropped { step, count, time };
                state.lines += 1;
                state.bytes += size(&item);
                out.push_back(item);
            }
        };

    for item in old {
        let in_head = kept_lines < keep_lines && kept_bytes < keep_bytes;
        // The marker being built will take a line of its own.
        let pending = usize::from(marker.is_some());
        let over = state.lines + pending > target_lines
            || state.bytes + pending * MARKER_SIZE > target_bytes;
        if in_head || !over || !is_line(&item) {
            // Kept: a pending marker goes first, it stands for lines older than this item.
            flush(&mut marker, &mut out, state);
            if in_head {
                kept_bytes += size(&item);
                if is_line(&item) {
                    kept_lines += 1;
                }
            }
            out.push_back(item);
            continue;
        }
        // Dropped, folded into the current marker.
        state.lines -= 1;
        state.bytes -= size(&item);
        let (step, count, time) = match item {
            Item::Line { step, line } => {
                dropped += 1;
                (step, 1, line.time)
            }
            Item::Dropped { step, count, time } => (step, count, time),
            Item::Started { .. } | Item::Finished { .. } | Item::Artifact { .. } => continue,
        };
        match &mut marker {
            Some((s, n, _)) if *s == step => *n += count,
            _ => {
                flush(&mut marker, &mut out, state);
                marker = Some((step, count, time));
            }
        }
    }
    flush(&mut marker, &mut out, state);
    state.items = out;
    state.dropped += dropped;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn line(step: &str, text: &str) -> Item {
        Item::Line {
            step: step.to_string(),
            line: LogLine {
                time: 1,
                line: text.to_string(),
            },
        }
    }

    fn small(max_lines: usize, batch_lines: usize) -> Limits {
        Limits {
            max_lines,
            max_bytes: usize::MAX / 2,
            batch_lines,
            batch_bytes: usize::MAX / 2,
            linger: Duration::ZERO,
        }
    }

    /// (step, seq, text) of every line, in batch order.
    fn flatten(batches: &[Vec<StageEvent>]) -> Vec<(String, u64, String)> {
        let mut out = Vec::new();
        for event in batches.iter().flatten() {
            if let StageEvent::Log {
                step,
                first_seq,
                lines,
            } = event
            {
                for (i, l) in lines.iter().enumerate() {
                    out.push((step.clone(), first_seq + i as u64, l.line.clone()));
                }
            }
        }
        out
    }

    async fn drain(queue: &EventQueue, seqs: &mut HashMap<String, u64>) -> Vec<Vec<StageEvent>> {
        queue.close();
        let mut batches = Vec::new();
        while let Some(batch) = queue.next_batch(seqs).await {
            batches.push(batch.events);
        }
        batches
    }

    #[tokio::test]
    async fn coalesces_lines_of_a_step_and_numbers_them_per_step() {
        let queue = EventQueue::new(Limits::default());
        queue.push(Item::Started {
            step: "a".into(),
            time: 5,
        });
        queue.push(line("a", "a0"));
        queue.push(line("a", "a1"));
        queue.push(line("b", "b0"));
        queue.push(line("a", "a2"));
        queue.push(Item::Finished {
            step: "a".into(),
            status: Status::Success,
            exit_code: Some(0),
            time: 9,
        });
        let mut seqs = HashMap::new();
        let batches = drain(&queue, &mut seqs).await;
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.len(), 5, "{batch:#?}");
        assert!(
            matches!(&batch[1], StageEvent::Log { step, first_seq: 0, lines } if step == "a" && lines.len() == 2)
        );
        assert!(
            matches!(&batch[2], StageEvent::Log { step, first_seq: 0, lines } if step == "b" && lines.len() == 1)
        );
        assert!(
            matches!(&batch[3], StageEvent::Log { step, first_seq: 2, lines } if step == "a" && lines.len() == 1)
        );
        assert!(matches!(&batch[4], StageEvent::StepFinished { .. }));
    }

    #[tokio::test]
    async fn batches_are_capped_and_numbering_continues_across_them() {
        let queue = EventQueue::new(small(1_000_000, 100));
        for i in 0..250 {
            queue.push(line("s", &i.to_string()));
        }
        let mut seqs = HashMap::new();
        let batches = drain(&queue, &mut seqs).await;
        assert_eq!(
            batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        let lines = flatten(&batches);
        assert_eq!(lines.len(), 250);
        for (i, (_, seq, text)) in lines.iter().enumerate() {
            assert_eq!((*seq, text.as_str()), (i as u64, i.to_string().as_str()));
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_middle_and_keeps_step_events() {
        let queue = EventQueue::new(small(100, 10_000));
        queue.push(Item::Started {
            step: "s".into(),
            time: 1,
        });
        for i in 0..1_000 {
            queue.push(line("s", &i.to_string()));
        }
        queue.push(Item::Finished {
            step: "s".into(),
            status: Status::Success,
            exit_code: Some(0),
            time: 2,
        });
        let mut seqs = HashMap::new();
        let batches = drain(&queue, &mut seqs).await;
        let events: Vec<&StageEvent> = batches.iter().flatten().collect();
        assert!(matches!(
            events.first(),
            Some(StageEvent::StepStarted { .. })
        ));
        assert!(matches!(
            events.last(),
            Some(StageEvent::StepFinished { .. })
        ));
        let lines = flatten(&batches);
        assert!(lines.len() <= 100, "{}", lines.len());
        // Contiguous numbers, the oldest half and the newest lines kept.
        for (i, (_, seq, _)) in lines.iter().enumerate() {
            assert_eq!(*seq, i as u64);
        }
        let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
        let expected_head: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        assert_eq!(
            texts[..50],
            expected_head.iter().map(String::as_str).collect::<Vec<_>>()[..]
        );
        assert_eq!(texts.last(), Some(&"999"));
        // Markers account for every line that is missing.
        let mut dropped = 0;
        let mut real = 0;
        let mut markers = 0;
        for text in &texts {
            if let Some(n) = text
                .strip_prefix("… ")
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
            {
                markers += 1;
                dropped += n;
            } else {
                real += 1;
            }
        }
        assert_eq!(dropped + real, 1_000, "{texts:?}");
        // One step, so one run of dropped lines however often the queue filled up.
        assert_eq!(markers, 1, "{texts:?}");
        assert_eq!(queue.dropped(), dropped);
        // The newest lines are in order after the marker(s).
        let tail: Vec<u64> = texts
            .iter()
            .skip(50)
            .filter_map(|t| t.parse().ok())
            .collect();
        assert!(tail.windows(2).all(|w| w[1] == w[0] + 1), "{tail:?}");
    }

    fn lingering(linger: Duration, batch_lines: usize) -> Limits {
        Limits {
            linger,
            ..small(1_000_000, batch_lines)
        }
    }

    fn started(step: &str) -> Item {
        Item::Started {
            step: step.into(),
            time: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_the_linger_for_more() {
        let queue = Arc::new(EventQueue::new(lingering(Duration::from_millis(20), 100)));
        queue.push(started("s"));
        let taker = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next_batch(&mut HashMap::new()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.push(line("s", "within"));
        tokio::time::sleep(Duration::from_millis(15)).await;
        queue.push(line("s", "after"));
        let batch = taker.await.expect("taker").expect("a batch");
        assert!(!batch.last);
        assert_eq!(batch.events.len(), 2, "{:#?}", batch.events);
        assert!(
            matches!(&batch.events[1], StageEvent::Log { lines, .. } if lines.len() == 1 && lines[0].line == "within")
        );
        let next = queue
            .next_batch(&mut HashMap::new())
            .await
            .expect("the rest");
        assert!(
            matches!(&next.events[..], [StageEvent::Log { lines, .. }] if lines[0].line == "after")
        );
    }

    #[tokio::test]
    async fn closing_ends_the_linger_and_marks_the_last_batch() {
        // A linger far beyond the test's timeout: only the close can end it.
        let queue = Arc::new(EventQueue::new(lingering(Duration::from_secs(3600), 100)));
        queue.push(started("s"));
        let taker = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next_batch(&mut HashMap::new()).await })
        };
        queue.push(line("s", "x"));
        queue.close();
        let batch = tokio::time::timeout(Duration::from_secs(30), taker)
            .await
            .expect("the close ends the linger")
            .expect("taker")
            .expect("a batch");
        assert!(batch.last);
        assert_eq!(batch.events.len(), 2);
        assert_eq!(queue.next_batch(&mut HashMap::new()).await, None);
    }

    #[tokio::test]
    async fn a_full_batch_goes_without_lingering() {
        let queue = EventQueue::new(lingering(Duration::from_secs(3600), 3));
        for i in 0..4 {
            queue.push(line("s", &i.to_string()));
        }
        let batch = tokio::time::timeout(
            Duration::from_secs(30),
            queue.next_batch(&mut HashMap::new()),
        )
        .await
        .expect("a full batch does not linger")
        .expect("a batch");
        assert!(!batch.last);
        assert!(matches!(&batch.events[..], [StageEvent::Log { lines, .. }] if lines.len() == 3));
    }

    #[tokio::test]
    async fn discard_forgets_everything() {
        let queue = EventQueue::new(Limits::default());
        queue.push(line("s", "x"));
        queue.discard();
        queue.push(line("s", "y"));
        assert_eq!(queue.next_batch(&mut HashMap::new()).await, None);
    }
}
