//! File helpers every part uses: atomic writes and streamed sha256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Write `contents` to `path` through a temporary name in the same
/// directory, synced, then renamed: readers see the old file or the new one.
/// The file gets `mode` (e.g. 0o600 for secrets).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Flush every dirty file of the filesystem that holds `dir` (`syncfs(2)`):
/// one call makes durable what many writes left in the page cache.
pub fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: syncfs(2) takes an open descriptor, which `d` keeps open for
    // the duration of the call; it touches no memory of ours.
    let r = unsafe { libc::syncfs(d.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Make `dst` hold what `src` holds: a hard link, or a copy where the
/// filesystem cannot link. `dst` must not exist.
pub fn link_or_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(src, dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => std::fs::copy(src, dst).map(|_| ()),
        r => r,
    }
}

/// sha256 (lowercase hex) of bytes in memory.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// sha256 (lowercase hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    sha256_open(&mut std::fs::File::open(path)?)
}

/// sha256 and size of what an open file holds, from its start (for a file
/// opened with care, e.g. `O_NOFOLLOW`, and hashed through that descriptor).
pub fn sha256_open(f: &mut std::fs::File) -> std::io::Result<(String, u64)> {
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    // A buffer no larger than the file: most artifacts of a job are small.
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; (len as usize).clamp(4096, 256 * 1024)];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_hash() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_atomic(&p, b"abc", 0o600).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (sha, n) = sha256_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
