//! Build logs. Workers send zstd frames; the master appends them as they
//! come to `logs/<build>/<job>.log.zst` (a concatenation of frames is a
//! valid zstd stream), so a log is stored compressed from its first byte
//! and needs no pass at the end. A cap per job keeps a runaway log from
//! filling the disk: past it one marker frame is written and the rest is
//! dropped while the build goes on. Followers get the text live.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::broadcast;

use kiln_store::Store;

use crate::paths::Paths;

thread_local! {
    /// One decompression context per thread, reused for every frame.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// One event on a job's live log.
#[derive(Debug, Clone)]
pub enum LogEvent {
    /// Text at `offset` of the (uncompressed) log.
    Data {
        offset: u64,
        data: Bytes,
    },
    End,
}

/// Where a live log is kept: in memory while it is small (most logs; the
/// log goes to the database in one row when the job ends, with no file to
/// create), in `logs/<build>/<job>.log.zst` once it outgrows that.
enum Sink {
    Mem(Vec<u8>),
    File(std::fs::File),
}

struct Open {
    sink: Sink,
    /// Uncompressed bytes so far.
    written: u64,
    capped: bool,
    tx: broadcast::Sender<LogEvent>,
    /// The log's last text (at least [`TAIL`] bytes of it once it has
    /// that many), from byte `tail_start`: a follower that fell behind
    /// catches up from here without decompressing the log.
    tail: Vec<u8>,
    tail_start: u64,
}

/// Text of a running log kept in memory for followers that fall behind
/// (between this and twice this).
const TAIL: usize = 1 << 20;

impl Open {
    fn keep(&mut self, text: &[u8]) {
        self.tail.extend_from_slice(text);
        if self.tail.len() > 2 * TAIL {
            let drop = self.tail.len() - TAIL;
            self.tail.drain(..drop);
            self.tail_start += drop as u64;
        }
    }
}

/// Compressed bytes a running job's log may keep in memory before it
/// spills to its file.
pub const SPILL: usize = 64 << 10;

pub struct Logs {
    paths: Paths,
    store: Store,
    cap: u64,
    open: Mutex<HashMap<i64, Open>>,
    /// Reads of stored logs at once: each decompresses a whole log, so
    /// many readers at once (a thousand pages catching up) are queued
    /// instead of all holding their buffers together.
    reads: tokio::sync::Semaphore,
}

/// Stored logs decoded at once (see [`Logs::read_from`]).
const READS_AT_ONCE: usize = 4;

impl Logs {
    pub fn new(paths: Paths, store: Store, cap: u64) -> Logs {
        Logs {
            paths,
            store,
            cap,
            open: Mutex::new(HashMap::new()),
            reads: tokio::sync::Semaphore::new(READS_AT_ONCE),
        }
    }

    fn table(&self) -> std::io::Result<std::sync::MutexGuard<'_, HashMap<i64, Open>>> {
        self.open
            .lock()
            .map_err(|_| std::io::Error::other("log table poisoned"))
    }

    fn with_open<T>(
        &self,
        build: i64,
        job: i64,
        f: impl FnOnce(&mut Open) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut map = self.table()?;
        if let std::collections::hash_map::Entry::Vacant(e) = map.entry(job) {
            // A log that had spilled to its file before a master restart
            // goes on there, where it was.
            let path = self.paths.log_zst(build, job);
            let (sink, written) = match std::fs::OpenOptions::new().append(true).open(&path) {
                Ok(file) => (Sink::File(file), decode_file(&path, u64::MAX)?.1),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    (Sink::Mem(Vec::new()), 0)
                }
                Err(err) => return Err(err),
            };
            let (tx, _) = broadcast::channel(1024);
            e.insert(Open {
                sink,
                written,
                capped: self.cap > 0 && written > self.cap,
                tx,
                tail: Vec::new(),
                tail_start: written,
            });
        }
        let open = map
            .get_mut(&job)
            .ok_or_else(|| std::io::Error::other("log vanished"))?;
        f(open)
    }

    /// Add compressed bytes to a live log, spilling it to its file when it
    /// grows past [`SPILL`].
    fn store_frame(&self, o: &mut Open, build: i64, job: i64, frame: &[u8]) -> std::io::Result<()> {
        match &mut o.sink {
            Sink::Mem(v) if v.len() + frame.len() <= SPILL => {
                v.extend_from_slice(frame);
                Ok(())
            }
            Sink::Mem(v) => {
                let path = self.paths.log_zst(build, job);
                if let Some(d) = path.parent() {
                    std::fs::create_dir_all(d)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)?;
                file.write_all(v)?;
                file.write_all(frame)?;
                o.sink = Sink::File(file);
                Ok(())
            }
            Sink::File(f) => f.write_all(frame),
        }
    }

    /// Append one zstd frame from a worker. Returns an error for a frame
    /// that does not decode (nothing is written then).
    pub fn append_frame(&self, build: i64, job: i64, frame: &[u8]) -> std::io::Result<()> {
        let text = DECOMPRESSOR.with(|d| match d.borrow_mut().as_mut() {
            Some(d) => d.decompress(frame, 8 << 20),
            None => zstd::bulk::decompress(frame, 8 << 20),
        })?;
        let cap = self.cap;
        self.with_open(build, job, |o| {
            if o.capped {
                return Ok(());
            }
            let (frame, text): (std::borrow::Cow<[u8]>, Vec<u8>) =
                match kiln_core::logcap::cut(cap, o.written, &text) {
                    None => (std::borrow::Cow::Borrowed(frame), text),
                    Some(t) => {
                        o.capped = true;
                        (zstd::bulk::compress(&t, 3)?.into(), t)
                    }
                };
            self.store_frame(o, build, job, &frame)?;
            let offset = o.written;
            o.written += text.len() as u64;
            o.keep(&text);
            let _ = o.tx.send(LogEvent::Data {
                offset,
                data: Bytes::from(text),
            });
            Ok(())
        })
    }

    /// Append text (compressed here).
    pub fn append(&self, build: i64, job: i64, text: &[u8]) -> std::io::Result<()> {
        self.append_frame(build, job, &zstd::bulk::compress(text, 3)?)
    }

    /// Subscribe to a running job's log; None once the job's log is closed.
    pub fn subscribe(&self, job: i64) -> Option<broadcast::Receiver<LogEvent>> {
        self.open.lock().ok()?.get(&job).map(|o| o.tx.subscribe())
    }

    /// Make sure a live log exists (so followers can subscribe before the
    /// first line arrives).
    pub fn open(&self, build: i64, job: i64) -> std::io::Result<()> {
        self.with_open(build, job, |_| Ok(()))
    }

    /// Queue the logs of these ended jobs that are still in memory for the
    /// database, now (so they join the commit that ends the jobs). Await
    /// the result before [`Logs::close`].
    pub fn save(
        &self,
        jobs: &[(i64, i64)],
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let logs: Vec<(i64, Vec<u8>)> = match self.open.lock() {
            Ok(map) => jobs
                .iter()
                .filter_map(|(_, job)| match map.get(job) {
                    Some(Open {
                        sink: Sink::Mem(v), ..
                    }) => Some((*job, v.clone())),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let write = (!logs.is_empty()).then(|| {
            self.store.write(move |t| {
                for (job, z) in &logs {
                    kiln_store::put_log(t, *job, z)?;
                }
                Ok(())
            })
        });
        async move {
            if let Some(w) = write {
                if let Err(e) = w.await {
                    tracing::error!("cannot store the logs of ended jobs: {e}");
                }
            }
        }
    }

    /// The job ended (its log saved): tell followers and forget it.
    pub fn close(&self, _build: i64, job: i64) {
        let removed = self.open.lock().ok().and_then(|mut m| m.remove(&job));
        if let Some(o) = removed {
            let _ = o.tx.send(LogEvent::End);
        }
    }

    /// Bytes of text stored so far for a job whose log is open.
    pub fn written(&self, job: i64) -> Option<u64> {
        self.open.lock().ok()?.get(&job).map(|o| o.written)
    }

    /// The live stream missed part of a log (the worker was disconnected
    /// for a while, or the master restarted): keep the complete
    /// `build.log` the worker sent with its result instead. Blocking.
    pub fn replace(&self, build: i64, job: i64, complete: &std::path::Path) -> std::io::Result<()> {
        let text = std::fs::read(complete)?;
        let z = zstd::bulk::compress(&text, 3)?;
        let path = self.paths.log_zst(build, job);
        self.with_open(build, job, |o| {
            match &mut o.sink {
                Sink::Mem(v) if z.len() <= SPILL => *v = z,
                _ => {
                    if let Some(d) = path.parent() {
                        std::fs::create_dir_all(d)?;
                    }
                    let tmp = path.with_extension("zst.tmp");
                    std::fs::write(&tmp, &z)?;
                    std::fs::rename(&tmp, &path)?;
                    o.sink = Sink::File(std::fs::OpenOptions::new().append(true).open(&path)?);
                }
            }
            if (text.len() as u64) > o.written {
                let _ = o.tx.send(LogEvent::Data {
                    offset: o.written,
                    data: Bytes::copy_from_slice(&text[o.written as usize..]),
                });
            }
            o.written = text.len() as u64;
            o.capped = self.cap > 0 && o.written > self.cap;
            let from = text.len().saturating_sub(TAIL);
            o.tail = text[from..].to_vec();
            o.tail_start = from as u64;
            Ok(())
        })
    }

    /// The whole log as text: live in memory, or saved in the database,
    /// or in its file.
    pub async fn read(&self, build: i64, job: i64) -> std::io::Result<Vec<u8>> {
        Ok(self.read_from(build, job, 0).await?.0)
    }

    /// The log's text from byte `from` on, and the log's whole length:
    /// decoded as a stream, the bytes before `from` dropped as they come
    /// (a page catching up holds only what it lacks, not the whole log).
    pub async fn read_from(
        &self,
        build: i64,
        job: i64,
        from: u64,
    ) -> std::io::Result<(Vec<u8>, u64)> {
        // A running log's recent text is in memory.
        if let Some(o) = self.table()?.get(&job) {
            if from >= o.tail_start {
                let at = ((from - o.tail_start) as usize).min(o.tail.len());
                return Ok((o.tail[at..].to_vec(), o.written));
            }
        }
        let _slot = self.reads.acquire().await.map_err(std::io::Error::other)?;
        let live = match self.table()?.get(&job) {
            Some(Open {
                sink: Sink::Mem(v), ..
            }) => Some(v.clone()),
            _ => None,
        };
        let z = match live {
            Some(z) => Some(z),
            None => self
                .store
                .read(move |c| kiln_store::get_log(c, job))
                .await
                .map_err(std::io::Error::other)?,
        };
        if let Some(z) = z {
            return Ok(decode(std::io::Cursor::new(z), from));
        }
        let path = self.paths.log_zst(build, job);
        tokio::task::spawn_blocking(move || match decode_file(&path, from) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), 0)),
            r => r,
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Decode a stream of zstd frames; a frame cut short by a crash ends the
/// text instead of failing the whole read.
fn decode_file(path: &std::path::Path, from: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let f = std::fs::File::open(path)?;
    Ok(decode(std::io::BufReader::new(f), from))
}

/// The text past byte `from`, and the text's whole length.
fn decode(r: impl std::io::BufRead, from: u64) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut at: u64 = 0;
    let Ok(mut dec) = zstd::stream::read::Decoder::with_buffer(r) else {
        return (out, 0);
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let end = at + n as u64;
                if end > from {
                    let skip = from.saturating_sub(at) as usize;
                    out.extend_from_slice(&buf[skip..n]);
                }
                at = end;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (out, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(dir: &std::path::Path, cap: u64) -> Logs {
        let store = Store::open(&dir.join("kiln.db"), kiln_store::Durability::Normal).unwrap();
        Logs::new(Paths::new(dir), store, cap)
    }

    async fn end(logs: &Logs, build: i64, job: i64) {
        logs.save(&[(build, job)]).await;
        logs.close(build, job);
    }

    /// Bytes zstd cannot shrink, so a log of them spills to its file.
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn cap_cuts_with_marker_and_a_small_log_ends_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 20);
        logs.append(1, 2, b"0123456789").unwrap();
        logs.append(1, 2, b"0123456789abcdef").unwrap();
        logs.append(1, 2, b"more").unwrap();
        end(&logs, 1, 2).await;
        let text = String::from_utf8(logs.read(1, 2).await.unwrap()).unwrap();
        assert!(text.starts_with("01234567890123456789\n[kiln: log cut here"));
        assert!(!text.contains("more"));
        assert!(
            !Paths::new(dir.path()).log_zst(1, 2).exists(),
            "no file for a small log"
        );
        let raw = logs
            .store
            .read(|c| kiln_store::get_log(c, 2))
            .await
            .unwrap()
            .expect("saved");
        assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
        assert!(logs.append_frame(1, 3, b"not zstd").is_err());
    }

    #[tokio::test]
    async fn a_log_that_fills_the_cap_exactly_is_marked_on_the_next_byte() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 10);
        logs.append(1, 2, b"0123456789").unwrap();
        assert_eq!(logs.read(1, 2).await.unwrap(), b"0123456789");
        // From an offset: only the rest, and the whole length.
        assert_eq!(
            logs.read_from(1, 2, 4).await.unwrap(),
            (b"456789".to_vec(), 10)
        );
        assert_eq!(logs.read_from(1, 2, 10).await.unwrap(), (Vec::new(), 10));
        assert_eq!(logs.read_from(1, 2, 99).await.unwrap(), (Vec::new(), 10));
        logs.append(1, 2, b"x").unwrap();
        let text = String::from_utf8(logs.read(1, 2).await.unwrap()).unwrap();
        assert!(
            text.starts_with("0123456789\n[kiln: log cut here"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_big_log_spills_to_its_file_and_goes_on_there_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let big = noise(SPILL + 1000);
        let first = logs(dir.path(), 1 << 30);
        first.append(1, 2, &big).unwrap();
        assert!(Paths::new(dir.path()).log_zst(1, 2).exists(), "spilled");
        drop(first);
        // A new master: the log goes on in its file, at its length.
        let again = logs(dir.path(), 1 << 30);
        again.append(1, 2, b"tail").unwrap();
        assert_eq!(again.written(2), Some(big.len() as u64 + 4));
        end(&again, 1, 2).await;
        let text = again.read(1, 2).await.unwrap();
        assert_eq!(&text[..big.len()], &big[..]);
        assert_eq!(&text[big.len()..], b"tail");
        // From its file, from an offset inside a frame.
        let from = big.len() as u64 - 3;
        let (rest, len) = again.read_from(1, 2, from).await.unwrap();
        assert_eq!(len, big.len() as u64 + 4);
        assert_eq!(&rest[..3], &big[big.len() - 3..]);
        assert_eq!(&rest[3..], b"tail");
    }

    #[tokio::test]
    async fn a_follower_behind_reads_the_recent_text_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 1 << 30);
        let mut all = Vec::new();
        for i in 0..3000u32 {
            let line = format!("line {i:06} {}\n", "x".repeat(1000));
            logs.append(1, 2, line.as_bytes()).unwrap();
            all.extend_from_slice(line.as_bytes());
        }
        let len = all.len() as u64;
        // Recent: from the in-memory tail (whole log past 2 MiB).
        let (recent, n) = logs.read_from(1, 2, len - 5000).await.unwrap();
        assert_eq!(n, len);
        assert_eq!(recent, &all[all.len() - 5000..]);
        // Older than the tail: decoded from the stored log, the same bytes.
        let (old, n) = logs.read_from(1, 2, 10).await.unwrap();
        assert_eq!(n, len);
        assert_eq!(old, &all[10..]);
        assert!(logs.written(2) == Some(len));
    }

    #[tokio::test]
    async fn truncated_tail_is_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let logs = logs(dir.path(), 1 << 30);
        logs.append(1, 2, b"first line\n").unwrap();
        logs.append(1, 2, &noise(SPILL + 10)).unwrap();
        logs.append(1, 2, b"last line\n").unwrap();
        end(&logs, 1, 2).await;
        let p = paths.log_zst(1, 2);
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() - 3]).unwrap();
        let text = logs.read(1, 2).await.unwrap();
        assert!(text.starts_with(b"first line\n"));
        assert!(!text.ends_with(b"last line\n"));
    }

    #[tokio::test]
    async fn a_complete_log_replaces_a_live_one_with_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 1 << 20);
        logs.append(1, 2, b"line 1\n").unwrap();
        let complete = dir.path().join("build.log");
        std::fs::write(&complete, b"line 1\nline 2\nline 3\n").unwrap();
        logs.replace(1, 2, &complete).unwrap();
        assert_eq!(logs.written(2), Some(21));
        end(&logs, 1, 2).await;
        assert_eq!(logs.read(1, 2).await.unwrap(), b"line 1\nline 2\nline 3\n");
    }
}
