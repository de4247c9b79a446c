//! What a volume is, as the CO hands it over: StorageClass parameters (CreateVolume), the volume
//! context / static PV `volumeAttributes` (every later call), and secrets. Parsing is strict:
//! unknown keys, bad values and oversized maps are refused with a message naming the key.

use std::collections::HashMap;

use crate::error::{CsiError, Result};
use crate::relpath::RelPath;

pub const KEY_VOLUME: &str = "volume";
pub const KEY_META: &str = "metaAddress";
pub const KEY_SUBDIR: &str = "subdir";
pub const KEY_PATTERN: &str = "pathPattern";
pub const KEY_LENIENT: &str = "lenient";

/// Added by external-provisioner `--extra-create-metadata`.
pub const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PV_NAME: &str = "csi.storage.k8s.io/pv/name";
/// Set by kubelet for inline (ephemeral) volumes when podInfoOnMount is on.
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

pub const SECRET_TOKEN: &str = "token";
pub const SECRET_MIRROR_KEY: &str = "mirrorAccessKeyId";
pub const SECRET_MIRROR_SECRET: &str = "mirrorSecretAccessKey";
pub const SECRET_SOURCE_KEY: &str = "sourceAccessKeyId";
pub const SECRET_SOURCE_SECRET: &str = "sourceSecretAccessKey";

/// The CSI size limit of a `map<string,string>`.
pub const MAX_MAP_BYTES: usize = 4096;

/// One mirror directory exposed as a volume: the keys of the volume context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The mirror volume's name in the mirror cluster.
    pub volume: String,
    /// The mirror meta service, `http(s)://host:port`.
    pub meta_address: String,
    /// The directory inside the volume (root when empty).
    pub subdir: RelPath,
    /// Accept writer access modes (still mounted read-only).
    pub lenient: bool,
}

impl VolumeSpec {
    /// The volume context returned by CreateVolume (no secrets; stable for a volume id).
    pub fn to_context(&self) -> HashMap<String, String> {
        let mut m = HashMap::from([
            (KEY_VOLUME.to_owned(), self.volume.clone()),
            (KEY_META.to_owned(), self.meta_address.clone()),
        ]);
        if !self.subdir.is_root() {
            m.insert(KEY_SUBDIR.into(), self.subdir.as_str().into());
        }
        if self.lenient {
            m.insert(KEY_LENIENT.into(), "true".into());
        }
        m
    }

    /// A volume context or static PV `volumeAttributes`. Keys set by Kubernetes itself
    /// (`csi.storage.k8s.io/…`, `storage.kubernetes.io/…`) are ignored, other unknown keys refused.
    pub fn from_context(ctx: &HashMap<String, String>) -> Result<Self> {
        check_map_size("volume_context", ctx)?;
        if ctx.get(EPHEMERAL).is_some_and(|v| v == "true") {
            return Err(CsiError::invalid(
                "volume_context",
                "inline (ephemeral) CSI volumes are not supported: use a PersistentVolume with a node-stage secret",
            ));
        }
        if ctx.contains_key(KEY_PATTERN) {
            return Err(CsiError::invalid(
                "volume_context",
                "pathPattern is a StorageClass parameter; a static PersistentVolume names its directory with volumeAttributes.subdir",
            ));
        }
        for k in ctx.keys() {
            let ours = [KEY_VOLUME, KEY_META, KEY_SUBDIR, KEY_LENIENT].contains(&k.as_str());
            let kubernetes =
                k.starts_with("csi.storage.k8s.io/") || k.starts_with("storage.kubernetes.io/");
            if !ours && !kubernetes {
                return Err(CsiError::invalid(
                    "volume_context",
                    format!(
                        "unknown key {k:?}; the mirrorfs driver takes {KEY_VOLUME}, {KEY_META}, {KEY_SUBDIR} and {KEY_LENIENT}"
                    ),
                ));
            }
        }
        let subdir = match ctx.get(KEY_SUBDIR) {
            Some(s) => {
                RelPath::parse(s).map_err(|r| CsiError::invalid("volume_context subdir", r))?
            }
            None => RelPath::default(),
        };
        Ok(VolumeSpec {
            volume: volume_name(ctx.get(KEY_VOLUME), "volume_context")?,
            meta_address: meta_address(ctx.get(KEY_META), "volume_context")?,
            subdir,
            lenient: lenient(ctx.get(KEY_LENIENT), "volume_context")?,
        })
    }
}

/// StorageClass parameters of CreateVolume: the volume spec, with a templated path resolved.
pub fn from_parameters(params: &HashMap<String, String>) -> Result<VolumeSpec> {
    check_map_size("parameters", params)?;
    for k in params.keys() {
        let known = [
            KEY_VOLUME,
            KEY_META,
            KEY_SUBDIR,
            KEY_PATTERN,
            KEY_LENIENT,
            PVC_NAME,
            PVC_NAMESPACE,
            PV_NAME,
        ]
        .contains(&k.as_str());
        if !known {
            return Err(CsiError::invalid(
                "parameters",
                format!(
                    "unknown StorageClass parameter {k:?}; the mirrorfs driver takes {KEY_VOLUME}, {KEY_META}, {KEY_SUBDIR} or {KEY_PATTERN}, and {KEY_LENIENT}"
                ),
            ));
        }
    }
    let subdir = match (params.get(KEY_SUBDIR), params.get(KEY_PATTERN)) {
        (Some(_), Some(_)) => {
            return Err(CsiError::invalid(
                "parameters",
                "set either subdir (a fixed directory) or pathPattern (a template), not both",
            ));
        }
        (Some(s), None) => {
            RelPath::parse(s).map_err(|r| CsiError::invalid("parameter subdir", r))?
        }
        (None, Some(p)) => {
            let expanded = expand_pattern(p, params)?;
            RelPath::parse(&expanded).map_err(|r| {
                CsiError::invalid(
                    "parameter pathPattern",
                    format!("{p:?} expands to a bad path: {r}"),
                )
            })?
        }
        (None, None) => RelPath::default(),
    };
    Ok(VolumeSpec {
        volume: volume_name(params.get(KEY_VOLUME), "parameters")?,
        meta_address: meta_address(params.get(KEY_META), "parameters")?,
        subdir,
        lenient: lenient(params.get(KEY_LENIENT), "parameters")?,
    })
}

/// Expands `${pvc.metadata.name}`, `${pvc.metadata.namespace}` and `${pv.metadata.name}`.
pub fn expand_pattern(pattern: &str, params: &HashMap<String, String>) -> Result<String> {
    let bad = |reason: String| CsiError::invalid("parameter pathPattern", reason);
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(bad(format!("{pattern:?} has an unterminated \"${{\"")));
        };
        let var = &after[..end];
        let key = match var {
            "pvc.metadata.name" => PVC_NAME,
            "pvc.metadata.namespace" => PVC_NAMESPACE,
            "pv.metadata.name" => PV_NAME,
            other => {
                return Err(bad(format!(
                    "unknown variable ${{{other}}} in {pattern:?}; use ${{pvc.metadata.name}}, ${{pvc.metadata.namespace}} or ${{pv.metadata.name}}"
                )));
            }
        };
        let value = params.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            bad(format!(
                "{pattern:?} uses ${{{var}}} but the request carries no {key}: run external-provisioner with --extra-create-metadata"
            ))
        })?;
        if value.contains('/') || value == "." || value == ".." {
            return Err(bad(format!(
                "${{{var}}} = {value:?} is not a single path component"
            )));
        }
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn check_map_size(what: &str, m: &HashMap<String, String>) -> Result<()> {
    let size: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_MAP_BYTES {
        return Err(CsiError::invalid(
            what,
            format!("is {size} bytes; CSI limits a map to {MAX_MAP_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn volume_name(v: Option<&String>, what: &str) -> Result<String> {
    let field = format!("{what} {KEY_VOLUME}");
    let v = v
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            CsiError::invalid(
                &field,
                "is required: the name of the mirror volume in the mirror cluster",
            )
        })?;
    if v.len() > 128 || v.contains('/') || v.chars().any(char::is_control) {
        return Err(CsiError::invalid(
            &field,
            format!("{v:?} is not a volume name (at most 128 bytes, no '/' or control characters)"),
        ));
    }
    Ok(v.to_owned())
}

fn meta_address(v: Option<&String>, what: &str) -> Result<String> {
    let field = format!("{what} {KEY_META}");
    let v = v
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            CsiError::invalid(
                &field,
                "is required: the mirror meta service URL, e.g. http://mirrorfs-meta.mirrorfs:7400",
            )
        })?;
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| {
            CsiError::invalid(&field, format!("{v:?} must start with http:// or https://"))
        })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(CsiError::invalid(
            &field,
            format!("{v:?} is not a URL of the form http://host:port"),
        ));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

fn lenient(v: Option<&String>, what: &str) -> Result<bool> {
    match v.map(|s| s.as_str()) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(CsiError::invalid(
            format!("{what} {KEY_LENIENT}"),
            format!("{other:?} is not \"true\" or \"false\""),
        )),
    }
}

/// Bucket credentials passed to the mount process.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyPair {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The secrets of a call. Values never appear in messages or logs (Debug is redacted).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Secrets {
    pub token: String,
    pub mirror_bucket: Option<KeyPair>,
    pub source_bucket: Option<KeyPair>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("token", &"<redacted>")
            .field("mirror_bucket", &self.mirror_bucket.is_some())
            .field("source_bucket", &self.source_bucket.is_some())
            .finish()
    }
}

impl Secrets {
    /// `which` names the Kubernetes secret for the message ("provisioner", "node-stage").
    /// Keys other than ours are ignored: a CO may send the same secrets to every call.
    pub fn parse(m: &HashMap<String, String>, which: &str) -> Result<Self> {
        let field = format!("{which} secret");
        let token = m.get(SECRET_TOKEN).map(|t| t.trim()).unwrap_or("");
        if token.is_empty() {
            return Err(CsiError::invalid(
                &field,
                format!(
                    "has no {SECRET_TOKEN:?} key: create a Secret with the mirror volume's token and reference it with csi.storage.k8s.io/{which}-secret-name and -namespace"
                ),
            ));
        }
        if !token.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(CsiError::invalid(
                &field,
                format!(
                    "key {SECRET_TOKEN:?} holds characters a token cannot have (printable ASCII only)"
                ),
            ));
        }
        let pair = |k: &str, s: &str| -> Result<Option<KeyPair>> {
            match (
                m.get(k).filter(|v| !v.is_empty()),
                m.get(s).filter(|v| !v.is_empty()),
            ) {
                (None, None) => Ok(None),
                (Some(a), Some(b)) => Ok(Some(KeyPair {
                    access_key_id: a.clone(),
                    secret_access_key: b.clone(),
                })),
                _ => Err(CsiError::invalid(
                    &field,
                    format!("{k} and {s} go together: set both or neither"),
                )),
            }
        };
        Ok(Secrets {
            token: token.to_owned(),
            mirror_bucket: pair(SECRET_MIRROR_KEY, SECRET_MIRROR_SECRET)?,
            source_bucket: pair(SECRET_SOURCE_KEY, SECRET_SOURCE_SECRET)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    const BASE: [(&str, &str); 2] = [("volume", "data"), ("metaAddress", "http://meta:7400")];

    #[test]
    fn parameters_with_fixed_subdir() {
        let mut p = map(&BASE);
        p.insert("subdir".into(), "team/a".into());
        let s = from_parameters(&p).map_err(|e| e.to_string());
        assert_eq!(
            s,
            Ok(VolumeSpec {
                volume: "data".into(),
                meta_address: "http://meta:7400".into(),
                subdir: RelPath::parse("team/a").unwrap_or_default(),
                lenient: false,
            })
        );
    }

    #[test]
    fn path_pattern_expands_claim_metadata() {
        let mut p = map(&BASE);
        p.insert(
            "pathPattern".into(),
            "ns/${pvc.metadata.namespace}/${pvc.metadata.name}-x".into(),
        );
        p.insert(PVC_NAME.into(), "claim".into());
        p.insert(PVC_NAMESPACE.into(), "team".into());
        p.insert(PV_NAME.into(), "pvc-123".into());
        let s = from_parameters(&p)
            .map(|s| s.subdir.as_str().to_owned())
            .map_err(|e| e.to_string());
        assert_eq!(s, Ok("ns/team/claim-x".into()));
    }

    #[test]
    fn bad_parameters_are_named() {
        let mut p = map(&BASE);
        p.insert("subDir".into(), "x".into());
        assert!(
            err_text(from_parameters(&p)).contains("unknown StorageClass parameter \"subDir\"")
        );

        let mut p = map(&BASE);
        p.insert("pathPattern".into(), "${pvc.name}".into());
        p.insert(PVC_NAME.into(), "c".into());
        assert!(err_text(from_parameters(&p)).contains("unknown variable ${pvc.name}"));

        let mut p = map(&BASE);
        p.insert("pathPattern".into(), "a/${pvc.metadata.name".into());
        assert!(err_text(from_parameters(&p)).contains("unterminated"));

        let mut p = map(&BASE);
        p.insert("pathPattern".into(), "a/${pvc.metadata.name}".into());
        assert!(err_text(from_parameters(&p)).contains("--extra-create-metadata"));

        let mut p = map(&BASE);
        p.insert("pathPattern".into(), "../${pvc.metadata.name}".into());
        p.insert(PVC_NAME.into(), "c".into());
        assert!(err_text(from_parameters(&p)).contains("\"..\" component"));

        for (sub, needle) in [("../x", "\"..\""), ("/abs", "absolute"), ("a\0b", "NUL")] {
            let mut p = map(&BASE);
            p.insert("subdir".into(), sub.into());
            assert!(err_text(from_parameters(&p)).contains(needle), "{sub:?}");
        }

        let mut p = map(&BASE);
        p.insert("subdir".into(), "a".into());
        p.insert("pathPattern".into(), "b".into());
        assert!(err_text(from_parameters(&p)).contains("not both"));

        let mut p = map(&BASE);
        p.insert("subdir".into(), "a/".repeat(2100));
        assert!(err_text(from_parameters(&p)).contains("CSI limits a map to 4096 bytes"));

        let p = map(&[("metaAddress", "http://meta:7400")]);
        assert!(err_text(from_parameters(&p)).contains("parameters volume: is required"));
        let p = map(&[("volume", "v")]);
        assert!(err_text(from_parameters(&p)).contains("metaAddress: is required"));
        let p = map(&[("volume", "v"), ("metaAddress", "meta:7400")]);
        assert!(err_text(from_parameters(&p)).contains("must start with http://"));
        let p = map(&[("volume", "a/b"), ("metaAddress", "http://m:1")]);
        assert!(err_text(from_parameters(&p)).contains("is not a volume name"));
        let p = map(&[
            ("volume", "v"),
            ("metaAddress", "http://m:1"),
            ("lenient", "yes"),
        ]);
        assert!(err_text(from_parameters(&p)).contains("\"yes\" is not \"true\" or \"false\""));
    }

    #[test]
    fn context_round_trips_and_ignores_kubernetes_keys() {
        let spec = VolumeSpec {
            volume: "data".into(),
            meta_address: "http://meta:7400".into(),
            subdir: RelPath::parse("a/b").unwrap_or_default(),
            lenient: true,
        };
        let mut ctx = spec.to_context();
        ctx.insert(
            "storage.kubernetes.io/csiProvisionerIdentity".into(),
            "x".into(),
        );
        ctx.insert("csi.storage.k8s.io/pod.name".into(), "p".into());
        assert_eq!(
            VolumeSpec::from_context(&ctx).map_err(|e| e.to_string()),
            Ok(spec)
        );
    }

    #[test]
    fn bad_contexts_are_refused() {
        let mut c = map(&BASE);
        c.insert("pathPattern".into(), "x".into());
        assert!(err_text(VolumeSpec::from_context(&c)).contains("static PersistentVolume"));
        let mut c = map(&BASE);
        c.insert("subDir".into(), "x".into());
        assert!(err_text(VolumeSpec::from_context(&c)).contains("unknown key \"subDir\""));
        let mut c = map(&BASE);
        c.insert(EPHEMERAL.into(), "true".into());
        assert!(err_text(VolumeSpec::from_context(&c)).contains("inline (ephemeral)"));
        assert!(
            err_text(VolumeSpec::from_context(&HashMap::new())).contains("volume: is required")
        );
    }

    #[test]
    fn secrets_need_a_token_and_whole_key_pairs() {
        let s = Secrets::parse(&map(&[("token", " t0k "), ("other", "x")]), "node-stage");
        assert_eq!(
            s.map(|s| s.token).map_err(|e| e.to_string()),
            Ok("t0k".into())
        );
        let e = err_text(Secrets::parse(&HashMap::new(), "provisioner"));
        assert!(
            e.contains("csi.storage.k8s.io/provisioner-secret-name"),
            "{e}"
        );
        let e = err_text(Secrets::parse(
            &map(&[("token", "t"), ("mirrorAccessKeyId", "AK")]),
            "node-stage",
        ));
        assert!(e.contains("set both or neither"), "{e}");
        let e = err_text(Secrets::parse(&map(&[("token", "t\u{1}x")]), "node-stage"));
        assert!(e.contains("printable ASCII"), "{e}");
        let s = Secrets::parse(&map(&[("token", "supersecret")]), "x");
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
