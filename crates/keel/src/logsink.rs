//! Where the log lines of `keel serve` go: appended to a buffer in memory and written to stdout
//! by a flusher thread, many lines per `write`.
//!
//! Writing each line with its own `write` cost every request a system call, and woke whatever
//! reads stdout (a pipe to journald, docker or a log shipper) once per line: two wake-ups per
//! enqueue on both sides of the pipe.
//!
//! Invariants:
//! - Lines leave whole and in the order they were logged: a line is appended under one lock, and
//!   a flush holds the output while it takes the buffer, so flushes cannot overtake each other.
//! - A line is written within `FLUSH_DELAY` of being logged. A logging thread never writes to
//!   stdout itself, unless the buffer has passed `HIGH_WATER` (a reader that keeps up gets lines in
//!   batches; one that does not blocks the loggers, as a full pipe always did), and it wakes the
//!   flusher only when the buffer was empty: at most once per batch.
//! - Everything logged before the [`Guard`] drops (at the end of `main`) or before a panic is
//!   written. A `kill -9` loses at most the last `FLUSH_DELAY` of lines, which promise nothing.
//! - After the guard drops, lines are written through, one `write` each.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in memory.
const FLUSH_DELAY: Duration = Duration::from_millis(5);
/// A buffer this large is written at once by the thread that filled it.
const HIGH_WATER: usize = 256 * 1024;

struct Shared {
    buf: Mutex<Buffer>,
    ready: Condvar,
    /// Held across each write, so flushes leave in the order they took the buffer.
    out: Mutex<Output>,
}

struct Output {
    w: Box<dyn Write + Send>,
    /// The buffer written last, swapped in for the next batch so it keeps its capacity.
    spare: Vec<u8>,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// The guard dropped: no flusher any more, write through.
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while logging leaves plain bytes behind: still fit to write.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn append(&self, line: &[u8]) {
        let mut buf = lock(&self.buf);
        if buf.closed {
            drop(buf);
            // Lines buffered before the close (the guard's last flush may not have run yet)
            // go first.
            let mut out = lock(&self.out);
            Self::take(&mut out, &mut lock(&self.buf));
            Self::write_out(&mut out);
            let _ = out.w.write_all(line);
            return;
        }
        let was_empty = buf.bytes.is_empty();
        buf.bytes.extend_from_slice(line);
        let full = buf.bytes.len() >= HIGH_WATER;
        drop(buf);
        if full {
            self.flush();
        } else if was_empty {
            self.ready.notify_one();
        }
    }

    fn flush(&self) {
        let mut out = lock(&self.out);
        Self::take(&mut out, &mut lock(&self.buf));
        Self::write_out(&mut out);
    }

    /// Swaps the buffer for the spare, which keeps its capacity for the next batch. Called with
    /// the output locked first, so batches are written in the order they were taken.
    fn take(out: &mut Output, buf: &mut Buffer) {
        out.spare.clear();
        std::mem::swap(&mut out.spare, &mut buf.bytes);
    }

    /// Writes the batch taken last; the buffer's lock is not held, so loggers go on meanwhile.
    fn write_out(out: &mut Output) {
        if !out.spare.is_empty() {
            let Output { w, spare } = out;
            let _ = w.write_all(spare);
            let _ = w.flush();
        }
    }

    /// `flush` for the panic hook: a panic while this thread held either lock must not hang it.
    fn try_flush(&self) {
        let Ok(mut out) = self.out.try_lock() else {
            return;
        };
        let Ok(mut buf) = self.buf.try_lock() else {
            return;
        };
        Self::take(&mut out, &mut buf);
        drop(buf);
        Self::write_out(&mut out);
    }

    fn run(&self) {
        loop {
            {
                let mut buf = lock(&self.buf);
                while buf.bytes.is_empty() && !buf.closed {
                    buf = self.ready.wait(buf).unwrap_or_else(PoisonError::into_inner);
                }
                if buf.closed {
                    return;
                }
            }
            // Let more lines gather: one write for all of them.
            std::thread::sleep(FLUSH_DELAY);
            self.flush();
        }
    }
}

/// The writer the fmt layer logs through; cheap to clone.
#[derive(Clone)]
pub struct LogSink(Arc<Shared>);

/// Flushes what is buffered and stops the flusher when dropped.
pub struct Guard {
    sink: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// Starts the flusher for stdout; lines are batched until the guard drops, and written through
/// after it.
pub fn start() -> (LogSink, Guard) {
    start_on(Box::new(std::io::stdout()))
}

fn start_on(out: Box<dyn Write + Send>) -> (LogSink, Guard) {
    let shared = Arc::new(Shared {
        buf: Mutex::new(Buffer::default()),
        ready: Condvar::new(),
        out: Mutex::new(Output {
            w: out,
            spare: Vec::new(),
        }),
    });
    let flusher = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("keel-logs".into())
            .spawn(move || shared.run())
            .ok()
    };
    if flusher.is_none() {
        // No thread: write every line through rather than keep it.
        lock(&shared.buf).closed = true;
    }
    // A panic's own message goes to stderr; the lines before it must not stay in memory.
    let on_panic = shared.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        on_panic.try_flush();
        previous(info);
    }));
    (
        LogSink(shared.clone()),
        Guard {
            sink: shared,
            flusher,
        },
    )
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock(&self.sink.buf).closed = true;
        self.sink.ready.notify_all();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        self.sink.flush();
    }
}

/// One event's text: the fmt layer formats a whole line, then writes it in one call.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An output that keeps what it was given and counts the writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut c = self.0.lock().unwrap();
            c.0.extend_from_slice(bytes);
            c.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            let c = self.0.lock().unwrap();
            String::from_utf8(c.0.clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn writes(&self) -> usize {
            self.0.lock().unwrap().1
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_order_in_few_writes() {
        let out = Capture::default();
        let (sink, guard) = start_on(Box::new(out.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!(
                            "{{\"thread\":{t},\"n\":{i},\"pad\":\"{}\"}}\n",
                            "x".repeat(i % 50)
                        );
                        sink.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let lines = out.lines();
        assert_eq!(
            lines.len(),
            20_000,
            "every line logged before the guard dropped is written"
        );
        let mut next = [0u64; 4];
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            let t = v["thread"].as_u64().unwrap() as usize;
            assert_eq!(
                v["n"].as_u64().unwrap(),
                next[t],
                "thread {t}'s lines out of order"
            );
            next[t] += 1;
        }
        assert!(
            out.writes() < 2_000,
            "{} writes for 20,000 lines: lines were not batched",
            out.writes()
        );
    }

    #[test]
    fn a_line_is_written_soon_without_more_lines_or_a_drop() {
        let out = Capture::default();
        let (sink, _guard) = start_on(Box::new(out.clone()));
        sink.make_writer().write_all(b"one\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.lines().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line stayed in memory"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.lines(), vec!["one"]);
    }

    #[test]
    fn after_the_guard_drops_lines_are_written_through() {
        let out = Capture::default();
        let (sink, guard) = start_on(Box::new(out.clone()));
        drop(guard);
        sink.make_writer().write_all(b"late\n").unwrap();
        assert_eq!(out.lines(), vec!["late"]);
    }
}
