//! Validation of every name that comes from outside: package, target,
//! channel and worker names, arches, and file names in listings.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {name:?} is too long (at most {max} bytes)")]
    TooLong {
        kind: &'static str,
        name: String,
        max: usize,
    },
    #[error("{kind} name {name:?} contains {what}")]
    BadChar {
        kind: &'static str,
        name: String,
        what: String,
    },
    #[error("unknown arch {0:?} (known: {known})", known = KNOWN_ARCHES.join(", "))]
    UnknownArch(String),
}

/// Arches Kiln knows. A build may only ask for these.
pub const KNOWN_ARCHES: &[&str] = &[
    "noarch", "x86_64", "i686", "i586", "i386", "aarch64", "armv7hl", "armhfp", "ppc64le", "ppc64",
    "s390x", "riscv64",
];

/// A target, channel, worker or package name: starts with an ASCII letter or
/// digit, then letters, digits and `._+-`; at most 128 bytes.
pub fn check_ident(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > 128 {
        return Err(NameError::TooLong {
            kind,
            name: name.to_string(),
            max: 128,
        });
    }
    let first_ok = name.as_bytes()[0].is_ascii_alphanumeric();
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        return Err(NameError::BadChar {
            kind,
            name: name.to_string(),
            what: format!("the character {c:?}"),
        });
    }
    if !first_ok {
        return Err(NameError::BadChar {
            kind,
            name: name.to_string(),
            what: "a leading punctuation character".into(),
        });
    }
    Ok(())
}

/// A file name from a listing or an upload: one path component, no `/`, no
/// `..`, no control character, at most 255 bytes.
pub fn check_file_name(name: &str) -> Result<(), NameError> {
    const KIND: &str = "file";
    if name.is_empty() {
        return Err(NameError::Empty { kind: KIND });
    }
    if name.len() > 255 {
        return Err(NameError::TooLong {
            kind: KIND,
            name: name.to_string(),
            max: 255,
        });
    }
    let bad = |what: &str| NameError::BadChar {
        kind: KIND,
        name: name.to_string(),
        what: what.to_string(),
    };
    if name.contains('/') || name.contains('\\') {
        return Err(bad("a path separator"));
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err(bad("\"..\""));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("a control character"));
    }
    if name.starts_with('.') {
        return Err(bad("a leading dot"));
    }
    Ok(())
}

pub fn check_arch(arch: &str) -> Result<(), NameError> {
    if KNOWN_ARCHES.contains(&arch) {
        Ok(())
    } else {
        Err(NameError::UnknownArch(arch.to_string()))
    }
}

/// The arches a worker of native arch `arch` can also build (Reimzul's
/// i386-on-x86_64).
pub fn compatible_arches(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" => &["x86_64", "i686", "i586", "i386", "noarch"],
        "i686" => &["i686", "i586", "i386", "noarch"],
        "aarch64" => &["aarch64", "armv7hl", "noarch"],
        "ppc64le" => &["ppc64le", "noarch"],
        "s390x" => &["s390x", "noarch"],
        _ => &[],
    }
}

/// The host's native arch in rpm's spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        "powerpc64" => "ppc64le",
        "arm" => "armv7hl",
        other => other,
    }
}

/// Split a comma separated list, trimming blanks and dropping empties.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents() {
        assert!(check_ident("target", "el9-updates_1.0+x").is_ok());
        assert!(check_ident("target", "").is_err());
        assert!(check_ident("target", "-x").is_err());
        assert!(check_ident("target", "a/b").is_err());
        assert!(check_ident("target", &"a".repeat(129)).is_err());
    }

    #[test]
    fn file_names() {
        assert!(check_file_name("foo-1.0-1.noarch.rpm").is_ok());
        for bad in ["", "a/b", "..", "../x", "x\n", ".hidden", "a..b"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arches() {
        assert!(check_arch("x86_64").is_ok());
        assert!(check_arch("vax").is_err());
        assert!(compatible_arches("x86_64").contains(&"i686"));
    }
}
