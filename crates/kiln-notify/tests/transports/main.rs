//! The IRC, MQTT and e-mail transports against real servers started by the
//! tests on loopback (free ports from binding :0): `ngircd`, `mosquitto`
//! and Python's `aiosmtpd` (`/usr/bin/python3 -m aiosmtpd`). A missing tool
//! fails the test; nothing is skipped. One binary, one link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod email;
mod irc;
mod mqtt;
