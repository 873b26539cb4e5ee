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

struct Open {
    file: std::fs::File,
    /// Uncompressed bytes so far.
    written: u64,
    capped: bool,
    tx: broadcast::Sender<LogEvent>,
}

pub struct Logs {
    paths: Paths,
    cap: u64,
    open: Mutex<HashMap<i64, Open>>,
}

impl Logs {
    pub fn new(paths: Paths, cap: u64) -> Logs {
        Logs {
            paths,
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn with_open<T>(
        &self,
        build: i64,
        job: i64,
        f: impl FnOnce(&mut Open) -> T,
    ) -> std::io::Result<T> {
        let mut map = self
            .open
            .lock()
            .map_err(|_| std::io::Error::other("log table poisoned"))?;
        if let std::collections::hash_map::Entry::Vacant(e) = map.entry(job) {
            let path = self.paths.log_zst(build, job);
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            // After a master restart the log goes on where it was.
            let written = if file.metadata()?.len() > 0 {
                decode_file(&path)?.len() as u64
            } else {
                0
            };
            let (tx, _) = broadcast::channel(1024);
            e.insert(Open {
                file,
                written,
                capped: written > self.cap,
                tx,
            });
        }
        let open = map
            .get_mut(&job)
            .ok_or_else(|| std::io::Error::other("log vanished"))?;
        Ok(f(open))
    }

    /// Append one zstd frame from a worker. Returns an error for a frame
    /// that does not decode (nothing is written then).
    pub fn append_frame(&self, build: i64, job: i64, frame: &[u8]) -> std::io::Result<()> {
        let text = DECOMPRESSOR.with(|d| match d.borrow_mut().as_mut() {
            Some(d) => d.decompress(frame, 8 << 20),
            None => zstd::bulk::decompress(frame, 8 << 20),
        })?;
        let cap = self.cap;
        self.with_open(build, job, |o| -> std::io::Result<()> {
            if o.capped {
                return Ok(());
            }
            let room = cap.saturating_sub(o.written) as usize;
            let (frame, text): (Vec<u8>, Vec<u8>) = if text.len() <= room {
                (frame.to_vec(), text)
            } else {
                let mut t = text[..room].to_vec();
                t.extend_from_slice(
                    format!("\n[kiln: log cut here: it reached the cap of {cap} bytes; the build goes on]\n")
                        .as_bytes(),
                );
                o.capped = true;
                (zstd::bulk::compress(&t, 3)?, t)
            };
            o.file.write_all(&frame)?;
            let offset = o.written;
            o.written += text.len() as u64;
            let _ = o.tx.send(LogEvent::Data {
                offset,
                data: Bytes::from(text),
            });
            Ok(())
        })?
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
        self.with_open(build, job, |_| ())
    }

    /// The job ended: tell followers and close the file.
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
    /// for a while): store the complete `build.log` the worker sent with
    /// its result instead. Blocking.
    pub fn replace(&self, build: i64, job: i64, complete: &std::path::Path) -> std::io::Result<()> {
        let path = self.paths.log_zst(build, job);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let text = std::fs::read(complete)?;
        let mut map = self
            .open
            .lock()
            .map_err(|_| std::io::Error::other("log table poisoned"))?;
        let tmp = path.with_extension("zst.tmp");
        std::fs::write(&tmp, zstd::bulk::compress(&text, 3)?)?;
        std::fs::rename(&tmp, &path)?;
        if let Some(o) = map.get_mut(&job) {
            o.file = std::fs::OpenOptions::new().append(true).open(&path)?;
            if (text.len() as u64) > o.written {
                let _ = o.tx.send(LogEvent::Data {
                    offset: o.written,
                    data: Bytes::copy_from_slice(&text[o.written as usize..]),
                });
            }
            o.written = text.len() as u64;
        }
        Ok(())
    }

    /// The whole log as text.
    pub fn read(&self, build: i64, job: i64) -> std::io::Result<Vec<u8>> {
        let path = self.paths.log_zst(build, job);
        match decode_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            r => r,
        }
    }
}

/// Decode a stream of zstd frames; a frame cut short by a crash ends the
/// text instead of failing the whole read.
fn decode_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut dec = zstd::stream::read::Decoder::new(std::io::BufReader::new(f))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_cuts_with_marker_and_stays_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(Paths::new(dir.path()), 20);
        logs.append(1, 2, b"0123456789").unwrap();
        logs.append(1, 2, b"0123456789abcdef").unwrap();
        logs.append(1, 2, b"more").unwrap();
        logs.close(1, 2);
        let text = String::from_utf8(logs.read(1, 2).unwrap()).unwrap();
        assert!(text.starts_with("01234567890123456789\n[kiln: log cut here"));
        assert!(!text.contains("more"));
        let raw = std::fs::read(Paths::new(dir.path()).log_zst(1, 2)).unwrap();
        assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
        assert!(logs.append_frame(1, 3, b"not zstd").is_err());
    }

    #[test]
    fn a_log_that_fills_the_cap_exactly_is_marked_on_the_next_byte() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(Paths::new(dir.path()), 10);
        logs.append(1, 2, b"0123456789").unwrap();
        assert_eq!(logs.read(1, 2).unwrap(), b"0123456789");
        logs.close(1, 2);
        // Reopened (as after a restart) at exactly the cap: not yet cut.
        logs.append(1, 2, b"x").unwrap();
        let text = String::from_utf8(logs.read(1, 2).unwrap()).unwrap();
        assert!(
            text.starts_with("0123456789\n[kiln: log cut here"),
            "{text}"
        );
    }

    #[test]
    fn truncated_tail_is_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let logs = Logs::new(paths.clone(), 1 << 20);
        logs.append(1, 2, b"first line\n").unwrap();
        logs.append(1, 2, b"second line\n").unwrap();
        logs.close(1, 2);
        let p = paths.log_zst(1, 2);
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() - 3]).unwrap();
        let text = String::from_utf8(logs.read(1, 2).unwrap()).unwrap();
        assert!(text.starts_with("first line\n"), "{text:?}");
    }
}
