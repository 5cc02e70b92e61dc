//! Where log lines go: stdout, a batch at a time. A thread that runs an event loop keeps the
//! lines of one turn of its loop and writes them with one `write` when the loop is about to
//! wait ([`flush`], the runtime's park hook), when they pass [`BATCH_LIMIT`], or at once with a
//! warning or an error. Any other thread, and an event loop before it first waits, writes each
//! line as it comes. Under a connection storm that is one `write` per turn of the loop instead
//! of one per connection; an idle proxy's lines leave before it waits, so no line waits on
//! traffic. What a crash loses is the current turn's lines (a few ms); an exit flushes.

use std::cell::{Cell, RefCell};
use std::io::Write;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// A batch larger than this is written at once.
pub const BATCH_LIMIT: usize = 32 * 1024;

/// This thread's lines not yet written; written when the thread ends.
struct Batch(RefCell<Vec<u8>>);

impl Drop for Batch {
    fn drop(&mut self) {
        write_out(&mut self.0.borrow_mut());
    }
}

thread_local! {
    static BATCH: Batch = const { Batch(RefCell::new(Vec::new())) };
    /// The thread runs an event loop that calls [`flush`] before it waits.
    static BATCHING: Cell<bool> = const { Cell::new(false) };
}

/// The log output for the tracing subscriber (see the module's documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Batched;

/// One line's writer: appends to this thread's batch, and writes the batch out when it is
/// dropped if the line is urgent, the thread does not batch, or the batch is full.
pub struct LineWriter {
    urgent: bool,
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let kept = BATCH.try_with(|b| b.0.borrow_mut().extend_from_slice(buf));
        if kept.is_err() {
            // The thread is ending: its batch is gone already.
            std::io::stdout().lock().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let _ = BATCH.try_with(|b| {
            let mut batch = b.0.borrow_mut();
            let batching = BATCHING.try_with(Cell::get).unwrap_or(false);
            if self.urgent || !batching || batch.len() >= BATCH_LIMIT {
                write_out(&mut batch);
            }
        });
    }
}

/// Writes this thread's batch out, and from now on lets it batch: an event loop's park hook
/// (it runs before the loop waits), and the end of a thread that ran one.
pub fn flush() {
    let _ = BATCHING.try_with(|b| b.set(true));
    let _ = BATCH.try_with(|b| write_out(&mut b.0.borrow_mut()));
}

fn write_out(batch: &mut Vec<u8>) {
    if batch.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    // Nothing to do about a log that cannot be written.
    let _ = out.write_all(batch).and_then(|()| out.flush());
    batch.clear();
    if batch.capacity() > 2 * BATCH_LIMIT {
        batch.shrink_to(BATCH_LIMIT);
    }
}

/// The lines this thread holds, for tests.
#[cfg(test)]
fn held() -> usize {
    BATCH.with(|b| b.0.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before its loop first waits a thread writes each line; after, it holds info lines until
    /// the next `flush` or until the batch is full, and writes at once with a warning. Through a
    /// real subscriber, so the level each line is written with is the event's.
    #[test]
    fn an_event_loop_thread_writes_its_lines_a_batch_at_a_time() {
        std::thread::spawn(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(Batched)
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!("before the loop waits");
                assert_eq!(held(), 0, "a thread that does not batch held a line");
                flush();
                tracing::info!("one");
                let one = held();
                assert!(one > 0, "an info line is held until the loop waits");
                tracing::info!("two");
                assert!(held() > one);
                flush();
                assert_eq!(held(), 0);
                tracing::info!("three");
                tracing::warn!("a warning");
                assert_eq!(held(), 0, "a warning writes the batch at once");
                tracing::info!("{}", "x".repeat(BATCH_LIMIT));
                assert_eq!(held(), 0, "a full batch is written at once");
                tracing::info!("left for the end of the thread");
                assert!(held() > 0);
            });
        })
        .join()
        .unwrap();
    }
}
