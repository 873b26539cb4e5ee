#!/usr/bin/env bash
# Installs what Kiln needs on Debian 12: the build tools it drives (rpm,
# rpmbuild, createrepo_c, dnf, bubblewrap, gpg), protoc for the wire format,
# a C compiler, the tools the tests' base repository packs, and Rust when it
# is missing.
set -euo pipefail
# patch, file, bzip2, xz-utils, unzip, zstd: packed (with rpm, bash, coreutils…) into the base
# repository the buildroot tests make from this machine's own files.
# mosquitto: the MQTT broker the trigger tests start on loopback.
# chromium, chromium-driver: the headless browser (and its WebDriver server)
# the web UI's browser tests drive.
# ngircd, python3-aiosmtpd: the IRC and SMTP servers the notification tests start on loopback.
# e2fsprogs, squashfs-tools, qemu-utils, qemu-system-x86, cpio: what images are made and
# boot-tested with (mkfs.ext4 -d, mksquashfs, qemu-img, qemu-system-x86_64 -accel tcg);
# busybox-static: the /init of the initramfs the boot test makes.
pkgs=(rpm createrepo-c dnf bubblewrap gnupg protobuf-compiler gcc make pkg-config ca-certificates curl git
  patch file bzip2 xz-utils unzip zstd mosquitto chromium chromium-driver
  ngircd python3-aiosmtpd e2fsprogs squashfs-tools qemu-utils qemu-system-x86 cpio busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
