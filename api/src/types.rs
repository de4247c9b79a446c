//! Domain newtypes: revisions, volume and inode numbers, block ids and checksums.

use std::fmt;

/// Why a textual id could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{what} {value:?} is not valid: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

macro_rules! u64_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The big-endian encoding, which sorts like the number in ordered key spaces.
            pub fn to_be_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

u64_newtype!(
    /// Position in a cluster's changelog: every committed transaction gets the next one, starting
    /// at 1. Revision 0 means "nothing committed yet" (or, in a compare, "the key is absent").
    Revision
);
u64_newtype!(
    /// A volume's number inside its cluster.
    VolumeId
);
u64_newtype!(
    /// An inode number inside a volume. The root directory of every volume is [`Ino::ROOT`].
    Ino
);

impl Ino {
    /// The root directory of a volume.
    pub const ROOT: Ino = Ino(1);
}

impl Revision {
    /// The revision after this one.
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

/// The object key of an immutable data block. Unique per volume and never reused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(String);

impl BlockId {
    /// Longest accepted block id.
    pub const MAX_LEN: usize = 512;

    /// Checks that `s` is usable as an object key: printable ASCII, no `..` component, no
    /// leading slash, bounded length.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let invalid = |why| ParseError::Invalid {
            what: "block id",
            value: s.chars().take(64).collect(),
            why,
        };
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(invalid("length must be 1..=512 bytes"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("only printable ASCII without spaces is allowed"));
        }
        if s.starts_with('/') || s.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(invalid(
                "empty, '.' and '..' path components are not allowed",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A BLAKE3 digest of a whole block.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    pub fn from_slice(b: &[u8]) -> Result<Self, ParseError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| ParseError::Invalid {
            what: "checksum",
            value: hex::encode(&b[..b.len().min(40)]),
            why: "a BLAKE3 checksum is exactly 32 bytes",
        })?;
        Ok(Self(arr))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({})", hex::encode(self.0))
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_reject_escapes_and_garbage() {
        assert!(BlockId::parse("vol1/blocks/00ab").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "a b", "a/./b", "é"] {
            assert!(BlockId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(BlockId::parse(&"x".repeat(513)).is_err());
    }

    #[test]
    fn checksum_requires_32_bytes() {
        assert!(Checksum::from_slice(&[0; 32]).is_ok());
        assert!(Checksum::from_slice(&[0; 31]).is_err());
    }

    #[test]
    fn revisions_sort_like_their_keys() {
        let (a, b) = (Revision(255), Revision(256));
        assert!(a < b && a.to_be_bytes() < b.to_be_bytes());
    }
}
