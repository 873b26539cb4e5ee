//! E-mail against Python's `aiosmtpd` (its default Debugging handler prints
//! every message it takes): plain SMTP, STARTTLS and TLS from the first byte.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_notify::email::{Email, EmailConfig, SmtpTls};

use crate::common::{certs, free_port, notice, tool, wait_port, Server};

fn aiosmtpd(dir: &Path, name: &str, port: u16, extra: &[&str]) -> Server {
    let py = tool("python3", &["/usr/bin/python3"]);
    let mut cmd = Command::new(py);
    cmd.args(["-u", "-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra);
    Server::start(name, cmd, dir)
}

/// The messages the server printed so far, once there are `n` (20 s at
/// most; polled, as the server tells no one).
async fn messages(server: &Server, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = server.output();
        let msgs: Vec<String> = out
            .split("---------- MESSAGE FOLLOWS ----------\n")
            .skip(1)
            .filter_map(|m| {
                m.split_once("------------ END MESSAGE ------------")
                    .map(|x| x.0.to_string())
            })
            .collect();
        if msgs.len() >= n {
            return msgs;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {n} messages after 20 s; stderr: {}",
            server.name,
            msgs.len(),
            server.errors()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    let head = msg.split("\n\n").next().unwrap();
    head.lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .map(|l| l[name.len() + 1..].trim())
}

fn config(port: u16, tls: SmtpTls, ca: Option<&Path>) -> EmailConfig {
    EmailConfig {
        server: "127.0.0.1".into(),
        port,
        tls,
        ca_file: ca.map(Path::to_path_buf),
        username: None,
        password: None,
        from: "Kiln <kiln@example.org>".into(),
        to: vec!["team@example.org".into()],
    }
}

#[tokio::test]
async fn email_headers_threading_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = aiosmtpd(dir.path(), "smtp", port, &[]);
    wait_port(port).await;
    let email = Email::new(config(port, SmtpTls::None, None)).unwrap();

    let mut failed = notice("m1", "build.failed");
    failed.nevr = Some("bash-5.2.26-1.el9\r\nBcc: victim@evil.org".into());
    failed.reason = Some("rpmbuild exited with 1".into());
    failed.arch = Some("x86_64".into());
    failed.log_tail = vec!["+ make".into(), "error: no rule".into()];
    let answer = email
        .deliver(
            &failed,
            &[
                "alice@example.org".into(),
                "not an address".into(),
                "team@example.org".into(),
            ],
        )
        .await
        .unwrap();
    assert!(answer.starts_with("250"), "{answer}");
    assert!(answer.contains("left out: not an address"), "{answer}");
    email
        .deliver(&notice("m2", "build.published"), &[])
        .await
        .unwrap();

    let msgs = messages(&server, 2).await;
    let m = &msgs[0];
    assert_eq!(header(m, "From"), Some("Kiln <kiln@example.org>"));
    assert_eq!(header(m, "To"), Some("team@example.org, alice@example.org"));
    assert_eq!(
        header(m, "Subject"),
        Some("[kiln] bash-5.2.26-1.el9  Bcc: victim@evil.org: build.failed on c9")
    );
    assert_eq!(header(m, "Bcc"), None);
    assert_eq!(header(m, "Message-ID"), Some("<m1@kiln>"));
    assert_eq!(
        header(m, "In-Reply-To"),
        Some("<build-42@kiln.example.org>")
    );
    assert_eq!(header(m, "References"), Some("<build-42@kiln.example.org>"));
    assert_eq!(header(m, "X-Kiln-Event"), Some("build.failed"));
    let body = m.split_once("\n\n").unwrap().1;
    for fact in [
        "Event:      build.failed",
        "Package:    bash-5.2.26-1.el9  Bcc: victim@evil.org",
        "Target:     c9",
        "State:      failed",
        "Arch:       x86_64",
        "Duration:   3m05s",
        "Reason:     rpmbuild exited with 1",
        "Build:      42",
        "Submitter:  alice",
        "    error: no rule",
        "https://kiln.example.org/builds/42",
    ] {
        assert!(body.contains(fact), "{fact:?} not in\n{body}");
    }
    // The second mail of the build is in the same thread.
    let m = &msgs[1];
    assert_eq!(header(m, "Message-ID"), Some("<m2@kiln>"));
    assert_eq!(
        header(m, "In-Reply-To"),
        Some("<build-42@kiln.example.org>")
    );
    assert_eq!(header(m, "To"), Some("team@example.org"));
}

#[tokio::test]
async fn email_starttls_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certs(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    let port = free_port();
    let starttls = aiosmtpd(
        dir.path(),
        "starttls",
        port,
        &["--tlscert", cert, "--tlskey", key],
    );
    wait_port(port).await;
    // Without the CA the server's certificate is not trusted.
    let untrusted = Email::new(config(port, SmtpTls::StartTls, None)).unwrap();
    let e = untrusted
        .deliver(&notice("t0", "build.failed"), &[])
        .await
        .unwrap_err();
    assert!(matches!(e, kiln_notify::NotifyError::Transport(_)), "{e}");
    let email = Email::new(config(port, SmtpTls::StartTls, Some(&ca))).unwrap();
    let answer = email
        .deliver(&notice("t1", "build.failed"), &[])
        .await
        .unwrap();
    assert!(answer.starts_with("250"), "{answer}");
    let msgs = messages(&starttls, 1).await;
    assert_eq!(header(&msgs[0], "Message-ID"), Some("<t1@kiln>"));
    // Plain SMTP to a server that requires STARTTLS is refused.
    let plain = Email::new(config(port, SmtpTls::None, None)).unwrap();
    let e = plain
        .deliver(&notice("t2", "build.failed"), &[])
        .await
        .unwrap_err();
    assert!(matches!(e, kiln_notify::NotifyError::Refused(_)), "{e}");

    let port = free_port();
    let smtps = aiosmtpd(
        dir.path(),
        "smtps",
        port,
        &["--smtpscert", cert, "--smtpskey", key],
    );
    wait_port(port).await;
    let email = Email::new(config(port, SmtpTls::Tls, Some(&ca))).unwrap();
    email
        .deliver(&notice("t3", "build.succeeded"), &[])
        .await
        .unwrap();
    let msgs = messages(&smtps, 1).await;
    assert_eq!(header(&msgs[0], "Message-ID"), Some("<t3@kiln>"));
}
