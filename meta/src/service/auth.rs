//! Bearer tokens: reading them from call metadata and checking the cluster's admin token.
//! Tokens are compared by their BLAKE3 hashes; the plain admin token is never kept.

use mirrorfs_api::AUTHORIZATION;
use tonic::metadata::MetadataMap;

use crate::error::MetaError;

/// The bearer token of a call, or `Unauthenticated` naming what it was for.
pub fn bearer<'a>(md: &'a MetadataMap, what: &str) -> Result<&'a str, MetaError> {
    md.get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MetaError::Unauthenticated {
            what: format!("{what} (send `authorization: Bearer <token>`)"),
        })
}

/// The admin token's hash.
#[derive(Clone)]
pub struct AdminToken(blake3::Hash);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(blake3::hash(token.trim().as_bytes()))
    }

    /// Checks the call's bearer token against the admin token.
    pub fn check(&self, md: &MetadataMap) -> Result<(), MetaError> {
        check_any(md, "the admin API", [Some(self)])
    }
}

/// Checks the call's bearer token against any of `tokens`.
pub fn check_any<'a>(
    md: &MetadataMap,
    what: &str,
    tokens: impl IntoIterator<Item = Option<&'a AdminToken>>,
) -> Result<(), MetaError> {
    let presented = blake3::hash(bearer(md, what)?.as_bytes());
    // blake3::Hash equality is constant-time.
    if tokens.into_iter().flatten().any(|t| t.0 == presented) {
        Ok(())
    } else {
        Err(MetaError::Unauthenticated { what: what.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(AUTHORIZATION, v.parse().expect("ascii"));
        m
    }

    #[test]
    fn admin_token_checks() {
        let t = AdminToken::new("s3cret\n");
        assert!(t.check(&md("Bearer s3cret")).is_ok());
        assert!(t.check(&md("Bearer other")).is_err());
        assert!(t.check(&md("s3cret")).is_err());
        assert!(t.check(&MetadataMap::new()).is_err());
    }
}
