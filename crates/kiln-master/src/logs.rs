//! Build logs: appended while the job runs (with a cap and a marker where
//! it was cut), followed live, and compressed with zstd when the job ends.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::paths::Paths;

/// One event on a job's live log.
#[derive(Debug, Clone)]
pub enum LogEvent {
    /// Bytes written at `offset` of the log file.
    Data {
        offset: u64,
        data: Bytes,
    },
    End,
}

struct Open {
    file: std::fs::File,
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
            let path = self.paths.log(build, job);
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let written = file.metadata()?.len();
            let (tx, _) = broadcast::channel(1024);
            e.insert(Open {
                file,
                written,
                capped: written >= self.cap,
                tx,
            });
        }
        let open = map
            .get_mut(&job)
            .ok_or_else(|| std::io::Error::other("log vanished"))?;
        Ok(f(open))
    }

    /// Append text to a job's log, honouring the cap.
    pub fn append(&self, build: i64, job: i64, data: &[u8]) -> std::io::Result<()> {
        let cap = self.cap;
        self.with_open(build, job, |o| -> std::io::Result<()> {
            if o.capped {
                return Ok(());
            }
            let room = cap.saturating_sub(o.written) as usize;
            let mut chunk = data[..data.len().min(room)].to_vec();
            if data.len() > room {
                chunk.extend_from_slice(
                    format!("\n[kiln: log cut here: it reached the cap of {cap} bytes; the build goes on]\n")
                        .as_bytes(),
                );
                o.capped = true;
            }
            o.file.write_all(&chunk)?;
            let offset = o.written;
            o.written += chunk.len() as u64;
            let _ = o.tx.send(LogEvent::Data {
                offset,
                data: Bytes::from(chunk),
            });
            Ok(())
        })?
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

    /// The job ended: tell followers, then compress the log.
    pub fn close(&self, build: i64, job: i64) {
        let removed = self.open.lock().ok().and_then(|mut m| m.remove(&job));
        if let Some(o) = removed {
            let _ = o.tx.send(LogEvent::End);
        }
        let (plain, zst) = (self.paths.log(build, job), self.paths.log_zst(build, job));
        if plain.exists() {
            if let Err(e) = compress(&plain, &zst) {
                tracing::warn!("cannot compress log {}: {e}", plain.display());
            }
        }
    }

    /// The whole log as text, compressed or not.
    pub fn read(&self, build: i64, job: i64) -> std::io::Result<Vec<u8>> {
        let plain = self.paths.log(build, job);
        match std::fs::read(&plain) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let zst = self.paths.log_zst(build, job);
                match std::fs::File::open(&zst) {
                    Ok(f) => zstd::stream::decode_all(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub fn path(&self, build: i64, job: i64) -> PathBuf {
        self.paths.log(build, job)
    }
}

fn compress(plain: &std::path::Path, zst: &std::path::Path) -> std::io::Result<()> {
    let tmp = zst.with_extension("zst.tmp");
    {
        let input = std::fs::File::open(plain)?;
        let out = std::fs::File::create(&tmp)?;
        let mut enc = zstd::stream::Encoder::new(out, 3)?;
        std::io::copy(&mut std::io::BufReader::new(input), &mut enc)?;
        enc.finish()?.sync_all()?;
    }
    std::fs::rename(&tmp, zst)?;
    std::fs::remove_file(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_cuts_with_marker_and_compresses() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(Paths::new(dir.path()), 20);
        logs.append(1, 2, b"0123456789").unwrap();
        logs.append(1, 2, b"0123456789abcdef").unwrap();
        logs.append(1, 2, b"more").unwrap();
        logs.close(1, 2);
        let text = String::from_utf8(logs.read(1, 2).unwrap()).unwrap();
        assert!(text.starts_with("01234567890123456789\n[kiln: log cut here"));
        assert!(!text.contains("more"));
        assert!(Paths::new(dir.path()).log_zst(1, 2).exists());
    }
}
