//! systemd's readiness protocol (`Type=notify`): when systemd started us it
//! sets `NOTIFY_SOCKET`, and we send `READY=1` once serving and
//! `STOPPING=1` when we stop. Without it, nothing happens.

use std::os::unix::net::UnixDatagram;

/// Send `state` (`READY=1`, `STOPPING=1`, `STATUS=…`) to systemd, if it
/// asked for it. Failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let p = path.to_string_lossy();
        match p.strip_prefix('@') {
            // An abstract socket (Linux).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                s.send_to_addr(state.as_bytes(), &addr)
            }
            None => s.send_to(state.as_bytes(), &*path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state:?} on NOTIFY_SOCKET failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    /// What the service manager would read, on a real socket.
    #[test]
    fn ready_reaches_the_socket_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The variable is read by `notify`; set for this process only, and
        // only by this test.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
