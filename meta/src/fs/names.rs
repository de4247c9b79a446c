//! Validation of untrusted names: directory-entry names, volume names, symlink targets and the
//! paths that [`FsMeta::resolve`](super::FsMeta::resolve) walks.

use crate::error::{MetaError, Result};

/// Longest directory-entry name, in bytes (POSIX `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes (`PATH_MAX`).
pub const TARGET_MAX: usize = 4096;
/// Longest volume name, in bytes.
pub const VOLUME_NAME_MAX: usize = 63;

fn invalid(name: &[u8], why: &'static str) -> MetaError {
    MetaError::InvalidName {
        name: String::from_utf8_lossy(name).into_owned(),
        why,
    }
}

/// A directory-entry name: 1..=255 bytes, no `/`, no NUL, not `.` or `..`. Any other bytes,
/// including non-UTF-8 ones, are allowed.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(name, "a name cannot be empty"));
    }
    if name.len() > NAME_MAX {
        return Err(MetaError::NameTooLong { len: name.len() });
    }
    if name == b"." || name == b".." {
        return Err(invalid(name, "'.' and '..' are not names of entries"));
    }
    if name.contains(&b'/') {
        return Err(invalid(name, "a name cannot contain '/'"));
    }
    if name.contains(&0) {
        return Err(invalid(name, "a name cannot contain a NUL byte"));
    }
    Ok(())
}

/// A volume name: 1..=63 bytes of `[a-z0-9][a-z0-9-_.]*`.
pub fn check_volume_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= VOLUME_NAME_MAX
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(MetaError::InvalidArgument(format!(
            "invalid volume name {:?}: use 1 to 63 characters of a-z, 0-9, '-', '_' and '.', \
             starting with a letter or a digit",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// A symlink target: 1..=4096 bytes without NUL. It is stored as given and never interpreted
/// by the metadata layer.
pub fn check_symlink_target(target: &[u8]) -> Result<()> {
    if target.is_empty() {
        return Err(MetaError::InvalidArgument(
            "a symlink target cannot be empty".into(),
        ));
    }
    if target.len() > TARGET_MAX {
        return Err(MetaError::InvalidArgument(format!(
            "symlink target is {} bytes long; the limit is {TARGET_MAX}",
            target.len()
        )));
    }
    if target.contains(&0) {
        return Err(MetaError::InvalidArgument(
            "a symlink target cannot contain a NUL byte".into(),
        ));
    }
    Ok(())
}

/// Splits a path from the volume root into its components. `""` and `"/"` are the root;
/// repeated and trailing slashes collapse; a leading slash is optional. `.` and `..` components
/// and NUL bytes are rejected rather than interpreted, so a path can never leave the volume.
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    let shown = || path.chars().take(200).collect::<String>();
    if path.contains('\0') {
        return Err(MetaError::InvalidArgument(format!(
            "path {:?} contains a NUL byte",
            shown()
        )));
    }
    let mut parts = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(MetaError::InvalidArgument(format!(
                "path {:?} contains a {c:?} component; give a normalised path from the volume root",
                shown()
            )));
        }
        check_name(c.as_bytes())?;
        parts.push(c);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use mirrorfs_api::FsErrorKind;

    use super::*;

    fn kind(r: Result<()>) -> Option<FsErrorKind> {
        r.err().map(|e| e.kind())
    }

    #[test]
    fn entry_names() {
        assert!(check_name(b"a").is_ok());
        assert!(check_name(b"\xff\xfe not utf-8").is_ok());
        assert!(check_name(b"...").is_ok());
        assert!(check_name(&[b'x'; 255]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
            assert_eq!(
                kind(check_name(bad)),
                Some(FsErrorKind::InvalidArgument),
                "{bad:?}"
            );
        }
        assert_eq!(
            kind(check_name(&[b'x'; 256])),
            Some(FsErrorKind::NameTooLong)
        );
    }

    #[test]
    fn volume_names() {
        for good in ["a", "data", "0-x_y.z", &"a".repeat(63)] {
            assert!(check_volume_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            ".a",
            "Data",
            "a b",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            let e = check_volume_name(bad).expect_err(bad);
            assert!(e.to_string().contains("volume name"), "{e}");
        }
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target(b"../x").is_ok());
        assert!(check_symlink_target(b"").is_err());
        assert!(check_symlink_target(b"a\0").is_err());
        assert!(check_symlink_target(&[b'a'; 4097]).is_err());
    }

    #[test]
    fn paths() {
        assert!(split_path("").unwrap_or_default().is_empty());
        assert!(split_path("/").unwrap_or_default().is_empty());
        assert!(split_path("//").unwrap_or_default().is_empty());
        assert_eq!(split_path("/a//b/").ok(), Some(vec!["a", "b"]));
        assert_eq!(split_path("a/b").ok(), Some(vec!["a", "b"]));
        for bad in ["/a/../b", "/./a", "..", "/a/\0"] {
            let e = split_path(bad).expect_err(bad);
            assert_eq!(e.kind(), FsErrorKind::InvalidArgument, "{bad}");
        }
        let long = format!("/{}", "x".repeat(256));
        assert_eq!(
            split_path(&long).err().map(|e| e.kind()),
            Some(FsErrorKind::NameTooLong)
        );
    }
}
