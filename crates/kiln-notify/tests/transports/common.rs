//! The harness: free ports, real servers started as children (killed on
//! drop), readiness by polling a TCP connect, test certificates, notices.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_notify::Notice;

/// A port free on 127.0.0.1 a moment ago (bound to :0, read, dropped).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Wait (at most 10 s) until something accepts connections on the port.
pub async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tool the tests need: found, or the test fails (never skips).
pub fn tool(name: &str, paths: &[&str]) -> PathBuf {
    for p in paths {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "required tool `{name}` was not found at {paths:?}; these tests need it and never skip \
         (Debian 12: apt-get install mosquitto ngircd python3-aiosmtpd)"
    );
}

/// A server started by a test: stdout and stderr to files in `dir`;
/// killed (by its pid) and reaped on drop.
pub struct Server {
    pub name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Server {
    pub fn start(name: &str, mut cmd: Command, dir: &Path) -> Server {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Server {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// SIGTERM (a clean stop: mosquitto writes its persistence file), and
    /// wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let st = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            c.wait().unwrap();
        }
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A notice of a build event.
pub fn notice(id: &str, event: &str) -> Notice {
    Notice {
        id: id.to_string(),
        event: event.to_string(),
        time: "2026-11-29T10:00:00Z".into(),
        target: Some("c9".into()),
        package: Some("bash".into()),
        nevr: Some("bash-5.2.26-1.el9".into()),
        build: Some(42),
        job: None,
        arch: None,
        state: event.split_once('.').map(|(_, s)| s.to_string()),
        submitter: Some("alice".into()),
        source: None,
        worker: None,
        duration_secs: Some(185),
        reason: None,
        repository: None,
        log_tail: vec![],
        url: Some("https://kiln.example.org/builds/42".into()),
        release: None,
        channel: None,
        version: None,
    }
}

/// A test CA and a server certificate for 127.0.0.1 and localhost, as
/// PEM files in `dir`: (ca.pem, server.pem, server.key).
pub fn certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}
