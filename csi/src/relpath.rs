//! A directory path inside a volume, checked once at the edge: relative, no `.` or `..`
//! components, no NUL, bounded length. Everything that later joins it onto a mount or sends it
//! to the meta service can rely on it never naming a place outside the volume.

use std::fmt;

/// Longest accepted path (PATH_MAX) and component (NAME_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_NAME_BYTES: usize = 255;

/// A normalised volume-relative path: components joined by `/`; empty means the volume root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct RelPath(String);

impl RelPath {
    /// Parses `s`; `what` names the input in the error ("parameter subdir").
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_PATH_BYTES {
            return Err(format!(
                "is {} bytes long; the limit is {MAX_PATH_BYTES}",
                s.len()
            ));
        }
        if s.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        if s.starts_with('/') {
            return Err(format!(
                "{s:?} is absolute; give a path relative to the volume root, e.g. {:?}",
                s.trim_start_matches('/')
            ));
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" => continue, // "a//b", trailing slash
                "." | ".." => {
                    return Err(format!(
                        "{s:?} contains a {c:?} component; paths must stay inside the volume and name each directory"
                    ));
                }
                c if c.len() > MAX_NAME_BYTES => {
                    return Err(format!(
                        "component {:?}… is longer than {MAX_NAME_BYTES} bytes",
                        c.chars().take(32).collect::<String>()
                    ));
                }
                c if c.chars().any(char::is_control) => {
                    return Err(format!("{s:?} contains a control character"));
                }
                c => parts.push(c),
            }
        }
        Ok(RelPath(parts.join("/")))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The relative form (`a/b`; empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form the meta service and messages use: `/a/b`, `/` for the root.
    pub fn display_abs(&self) -> String {
        format!("/{}", self.0)
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_normalised() {
        assert_eq!(RelPath::parse("a/b").map(|p| p.0), Ok("a/b".into()));
        assert_eq!(RelPath::parse("a//b/").map(|p| p.0), Ok("a/b".into()));
        assert_eq!(RelPath::parse("").map(|p| p.is_root()), Ok(true));
        assert_eq!(
            RelPath::parse("team x/données").map(|p| p.display_abs()),
            Ok("/team x/données".into())
        );
    }

    #[test]
    fn escapes_and_garbage_are_refused() {
        for (bad, needle) in [
            ("../etc", "\"..\" component"),
            ("a/../../b", "\"..\" component"),
            ("a/./b", "\".\" component"),
            ("/abs/path", "is absolute"),
            ("a\0b", "NUL"),
            ("a\nb", "control character"),
        ] {
            let e = RelPath::parse(bad).err().unwrap_or_default();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        let long = "a/".repeat(2049);
        assert!(
            RelPath::parse(&long)
                .err()
                .unwrap_or_default()
                .contains("limit is 4096")
        );
        let name = "n".repeat(256);
        assert!(
            RelPath::parse(&name)
                .err()
                .unwrap_or_default()
                .contains("longer than 255")
        );
    }
}
