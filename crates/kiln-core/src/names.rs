//! Validation of every name that comes from outside: package, target,
//! channel and worker names, arches, and file names in listings.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {} is too long (at most {max} bytes)", shown(.name))]
    TooLong {
        kind: &'static str,
        name: String,
        max: usize,
    },
    #[error("{kind} name {} contains {what}", shown(.name))]
    BadChar {
        kind: &'static str,
        name: String,
        what: String,
    },
    #[error("unknown arch {} (known: {known})", shown(.0), known = KNOWN_ARCHES.join(", "))]
    UnknownArch(String),
    /// A value from a package header (version, release, arch…).
    #[error("{field} is empty")]
    FieldEmpty { field: &'static str },
    #[error("{field} {} is too long ({len} bytes, at most {max})", shown(.value))]
    FieldTooLong {
        field: &'static str,
        value: String,
        len: usize,
        max: usize,
    },
    #[error("{field} {} contains {what}", shown(.value))]
    BadField {
        field: &'static str,
        value: String,
        what: String,
    },
    #[error("{field} lists {count} arches (at most {max})")]
    TooManyArches {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

/// How a value from outside is shown in a message: quoted, every control,
/// format or bidi character escaped (`\u{202e}`), cut after 64 characters.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::from("\"");
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push('\u{2026}');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// `text` with everything a terminal would act on (control characters,
/// ANSI escapes, Unicode format and bidi characters, line separators)
/// escaped, the rest kept: for printing package data to a terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == ' ' || c.is_ascii_graphic() || !needs_escape(c) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

/// Unicode bidirectional embedding, override and isolate controls.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Characters that are not shown as themselves: control and format
/// characters (bidi controls, zero-width characters, the BOM…), line and
/// paragraph separators, and whitespace other than the space.
fn needs_escape(c: char) -> bool {
    if c.is_control() || (c.is_whitespace() && c != ' ') || is_bidi_control(c) {
        return true;
    }
    // Rust's own table of printable characters (`escape_debug` leaves a
    // printable character as it is) covers the format characters (Cf).
    !c.is_ascii() && c.escape_debug().count() != 1
}

/// What is wrong with `c` in a value from a package header, in words.
fn describe_char(c: char) -> String {
    let code = format!("U+{:04X}", c as u32);
    if c == '\n' || c == '\r' {
        format!("a line break ({code})")
    } else if c == '\u{1b}' {
        format!("an escape character ({code}, as in ANSI terminal sequences)")
    } else if c.is_control() {
        format!("a control character ({code})")
    } else if is_bidi_control(c) {
        format!("a Unicode bidirectional control ({code})")
    } else if c.is_whitespace() {
        format!("whitespace ({code})")
    } else if needs_escape(c) {
        format!("an invisible Unicode format character ({code})")
    } else if c == '/' {
        "a '/'".to_string()
    } else {
        format!("the character {c:?}")
    }
}

/// Longest version, release or arch Kiln accepts from a package header.
pub const MAX_HEADER_FIELD: usize = 256;

/// A `Version` or `Release` as rpm accepts it in a spec file: ASCII letters
/// and digits and `._+~^%{}` (rpm's `ALLOWED_CHARS_VERREL`), so no '-', no
/// '/', no whitespace, no control, format or bidi character; at most
/// [`MAX_HEADER_FIELD`] bytes.
pub fn check_version_field(field: &'static str, value: &str) -> Result<(), NameError> {
    check_field(field, value, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | '^' | '%' | '{' | '}')
    })
    .map_err(|e| match e {
        NameError::BadField { field, value, what } if what == "the character '-'" => {
            NameError::BadField {
                field,
                value,
                what: "a '-' (it separates version and release)".into(),
            }
        }
        NameError::BadField { field, value, what } if what.starts_with("the character") => {
            NameError::BadField {
                field,
                value,
                what: format!("{what} (rpm allows letters, digits and ._+~^%{{}})"),
            }
        }
        e => e,
    })
}

/// An arch as rpm spells one in a header (`x86_64`, `noarch`, `armv7hl`):
/// ASCII letters, digits and '_'; at most 64 bytes.
pub fn check_arch_token(field: &'static str, value: &str) -> Result<(), NameError> {
    if value.len() > 64 {
        return Err(NameError::FieldTooLong {
            field,
            value: value.to_string(),
            len: value.len(),
            max: 64,
        });
    }
    check_field(field, value, |c| c.is_ascii_alphanumeric() || c == '_')
}

/// Most arches one `BuildArch`/`ExclusiveArch`/`ExcludeArch` may list.
pub const MAX_ARCH_LIST: usize = 256;

/// Every arch of a header's arch list (see [`check_arch_token`]).
pub fn check_arch_list(field: &'static str, values: &[String]) -> Result<(), NameError> {
    if values.len() > MAX_ARCH_LIST {
        return Err(NameError::TooManyArches {
            field,
            count: values.len(),
            max: MAX_ARCH_LIST,
        });
    }
    values.iter().try_for_each(|v| check_arch_token(field, v))
}

fn check_field(
    field: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::FieldEmpty { field });
    }
    if value.len() > MAX_HEADER_FIELD {
        return Err(NameError::FieldTooLong {
            field,
            value: value.to_string(),
            len: value.len(),
            max: MAX_HEADER_FIELD,
        });
    }
    match value.chars().find(|c| !allowed(*c)) {
        None => Ok(()),
        Some(c) => Err(NameError::BadField {
            field,
            value: value.to_string(),
            what: describe_char(c),
        }),
    }
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

/// Is `s` a sha256 as Kiln writes it everywhere: 64 lower-case hex digits?
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    fn versions_and_releases() {
        for good in [
            "1.0",
            "1.0~rc1",
            "2^20240101git",
            "1.el9_2",
            "3+b1",
            "1%{dist}",
        ] {
            assert!(check_version_field("release", good).is_ok(), "{good:?}");
        }
        let bad = [
            ("", "empty"),
            ("1-2", "'-'"),
            ("1/2", "'/'"),
            ("1 2", "whitespace"),
            ("1\t2", "control"),
            ("1\n2", "line break"),
            ("1\u{1b}[31m", "escape"),
            ("1\u{202e}", "bidirectional"),
            ("1\u{2066}", "bidirectional"),
            ("1\u{200b}", "format"),
            ("1\u{feff}", "format"),
            ("1\u{2028}", "whitespace"),
            ("1é", "rpm allows"),
        ];
        for (value, word) in bad {
            let e = check_version_field("release", value)
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{value:?}: {e}");
            assert!(!e.chars().any(needs_escape), "unescaped in {e:?}");
        }
        let long = "1".repeat(MAX_HEADER_FIELD + 1);
        let e = check_version_field("version", &long)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too long") && e.len() < 200, "{e}");
        assert!(check_version_field("version", &"1".repeat(MAX_HEADER_FIELD)).is_ok());
    }

    #[test]
    fn arch_tokens() {
        assert!(check_arch_token("arch", "x86_64").is_ok());
        assert!(check_arch_token("arch", "noarch").is_ok());
        for bad in ["", "x86-64", "x86 64", "a\u{202e}", "a\n", &"a".repeat(65)] {
            assert!(check_arch_token("arch", bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_ARCH_LIST).map(|i| format!("a{i}")).collect();
        assert!(check_arch_list("ExclusiveArch", &many).is_err());
        assert!(check_arch_list("ExclusiveArch", &many[..3]).is_ok());
    }

    #[test]
    fn shown_and_printable_escape() {
        let evil = "a\u{1b}[2J\u{202e}b\nc\u{200b}d é";
        let p = printable(evil);
        assert_eq!(p, "a\\u{1b}[2J\\u{202e}b\\u{a}c\\u{200b}d é");
        assert!(!shown(evil).chars().any(needs_escape));
        assert!(shown(&"x".repeat(1000)).len() < 80);
    }

    #[test]
    fn arches() {
        assert!(check_arch("x86_64").is_ok());
        assert!(check_arch("vax").is_err());
        assert!(compatible_arches("x86_64").contains(&"i686"));
    }
}
