//! Volume ids. Dynamic volumes get `mfs1-` and 40 hex digits of a BLAKE3 hash of the claim name,
//! mirror, volume and directory: unique per claim, always within CSI's 128 bytes however deep
//! the path (the path itself travels in the volume context). Static PVs choose their own
//! `volumeHandle`; the driver only checks that it is a sane CSI string.

use crate::error::{CsiError, Result};
use crate::params::VolumeSpec;

pub const PREFIX: &str = "mfs1-";
/// The CSI limit of a string field.
pub const MAX_ID_BYTES: usize = 128;

/// The id of the volume CreateVolume `name` maps to.
pub fn for_claim(name: &str, spec: &VolumeSpec) -> String {
    let mut h = blake3::Hasher::new();
    for part in [name, &spec.meta_address, &spec.volume, spec.subdir.as_str()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let hex = h.finalize().to_hex();
    format!("{PREFIX}{}", &hex[..40])
}

/// Whether `id` has the shape of an id this driver generates.
pub fn is_generated(id: &str) -> bool {
    id.strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks a volume id from a request: present, at most 128 bytes, no control characters.
pub fn check(id: &str) -> Result<&str> {
    if id.is_empty() {
        return Err(CsiError::MissingField("volume_id"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CsiError::invalid(
            "volume_id",
            format!("is {} bytes; CSI allows at most {MAX_ID_BYTES}", id.len()),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(CsiError::invalid(
            "volume_id",
            "contains control characters",
        ));
    }
    Ok(id)
}

/// Teardown (NodeUnpublish/NodeUnstage) takes any non-empty id: undoing nothing must succeed
/// even for an id the spec would not allow, or a pod could never be cleaned up.
pub fn check_teardown(id: &str) -> Result<&str> {
    if id.is_empty() {
        return Err(CsiError::MissingField("volume_id"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relpath::RelPath;

    fn spec(sub: &str) -> VolumeSpec {
        VolumeSpec {
            volume: "data".into(),
            meta_address: "http://meta:7400".into(),
            subdir: RelPath::parse(sub).unwrap_or_default(),
            lenient: false,
        }
    }

    #[test]
    fn ids_are_short_stable_and_distinct() {
        let deep = "d/".repeat(1000);
        let a = for_claim("pvc-1", &spec(&deep));
        assert!(a.len() <= MAX_ID_BYTES && is_generated(&a), "{a}");
        assert_eq!(a, for_claim("pvc-1", &spec(&deep)));
        assert_ne!(a, for_claim("pvc-2", &spec(&deep)));
        assert_ne!(
            for_claim("pvc-1", &spec("a")),
            for_claim("pvc-1", &spec("b"))
        );
    }

    #[test]
    fn garbled_ids_are_refused_or_not_ours() {
        assert!(matches!(check(""), Err(CsiError::MissingField(_))));
        assert!(check(&"x".repeat(129)).is_err());
        assert!(check("a\nb").is_err());
        assert!(check("static-handle").is_ok());
        assert!(check_teardown(&"x".repeat(300)).is_ok());
        assert!(check_teardown("").is_err());
        assert!(!is_generated("mfs1-zz"));
        assert!(!is_generated("static-handle"));
    }
}
