//! Access modes and mount options. Mirror volumes are read-only whatever is asked: reader modes
//! are accepted; writer modes are refused unless the volume is `lenient`, and even then the
//! mount is read-only. Raw block access is never offered.

use crate::csi::VolumeCapability;
use crate::csi::volume_capability::{AccessType, access_mode::Mode};
use crate::error::{CsiError, Result};

/// Mount options the driver applies to the read-only bind mount.
pub const SUPPORTED_FLAGS: [&str; 6] = ["ro", "nosuid", "nodev", "noexec", "noatime", "relatime"];

/// What a capability asks for, once checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Access {
    /// The CSI access mode number.
    pub mode: i32,
    /// Mount options, deduplicated and sorted.
    pub flags: Vec<String>,
}

impl Access {
    pub fn single_node(&self) -> bool {
        matches!(
            Mode::try_from(self.mode),
            Ok(Mode::SingleNodeWriter | Mode::SingleNodeReaderOnly | Mode::SingleNodeSingleWriter)
        )
    }
}

fn mode_name(m: Mode) -> &'static str {
    m.as_str_name()
}

/// Why a capability is refused, before the caller picks the code (controller and node differ).
pub enum Refusal {
    /// Malformed or never supported (block, unknown mode, bad option).
    Invalid(String),
    /// A writer mode on a strict volume.
    Writer(String),
}

/// Checks one capability; `lenient` lets writer modes through.
pub fn check(
    cap: &VolumeCapability,
    volume: &str,
    lenient: bool,
) -> std::result::Result<Access, Refusal> {
    let mount = match &cap.access_type {
        Some(AccessType::Mount(m)) => m,
        Some(AccessType::Block(_)) => {
            return Err(Refusal::Invalid(format!(
                "volume {volume:?}: raw block access is not supported; mirrorfs volumes are file systems (volumeMode: Filesystem)"
            )));
        }
        None => {
            return Err(Refusal::Invalid(
                "volume_capability.access_type is required (mount)".into(),
            ));
        }
    };
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| m.mode)
        .ok_or_else(|| Refusal::Invalid("volume_capability.access_mode is required".into()))?;
    let m = Mode::try_from(mode)
        .ok()
        .filter(|m| *m != Mode::Unknown)
        .ok_or_else(|| Refusal::Invalid(format!("unknown access mode {mode}")))?;
    let reader = matches!(m, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly);
    if !reader && !lenient {
        return Err(Refusal::Writer(format!(
            "volume {volume:?} is a read-only mirror and cannot be used with access mode {} : request ReadOnlyMany (MULTI_NODE_READER_ONLY) in the claim, or set lenient: \"true\" to accept writer modes and still mount read-only",
            mode_name(m)
        )));
    }
    let mut flags = Vec::new();
    for f in &mount.mount_flags {
        for f in f.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if !SUPPORTED_FLAGS.contains(&f) {
                return Err(Refusal::Invalid(format!(
                    "volume {volume:?}: mount option {f:?} is not supported; the mirrorfs driver accepts {}",
                    SUPPORTED_FLAGS.join(", ")
                )));
            }
            flags.push(f.to_owned());
        }
    }
    flags.sort();
    flags.dedup();
    Ok(Access { mode, flags })
}

/// Controller side (CreateVolume): every refusal is an invalid argument.
pub fn for_controller(
    caps: &[VolumeCapability],
    volume: &str,
    lenient: bool,
) -> Result<Vec<Access>> {
    if caps.is_empty() {
        return Err(CsiError::MissingField("volume_capabilities"));
    }
    caps.iter()
        .map(|c| {
            check(c, volume, lenient).map_err(|r| match r {
                Refusal::Invalid(m) | Refusal::Writer(m) => CsiError::UnsupportedCapability(m),
            })
        })
        .collect()
}

/// Node side (Stage/Publish): a writer mode is more than the volume allows.
pub fn for_node(cap: Option<&VolumeCapability>, volume: &str, lenient: bool) -> Result<Access> {
    let cap = cap.ok_or(CsiError::MissingField("volume_capability"))?;
    check(cap, volume, lenient).map_err(|r| match r {
        Refusal::Invalid(m) => CsiError::UnsupportedCapability(m),
        Refusal::Writer(m) => CsiError::CapabilityExceedsVolume(m),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    pub fn cap(mode: Mode, flags: &[&str]) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: String::new(),
                mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                volume_mount_group: String::new(),
            })),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn readers_pass_writers_need_lenient() {
        assert!(for_node(Some(&cap(Mode::MultiNodeReaderOnly, &[])), "v", false).is_ok());
        let e = for_node(Some(&cap(Mode::MultiNodeMultiWriter, &[])), "v", false);
        assert!(
            matches!(&e, Err(CsiError::CapabilityExceedsVolume(m)) if m.contains("request ReadOnlyMany")),
            "{e:?}"
        );
        let e = for_controller(&[cap(Mode::SingleNodeWriter, &[])], "v", false);
        assert!(matches!(e, Err(CsiError::UnsupportedCapability(_))));
        assert!(for_controller(&[cap(Mode::SingleNodeWriter, &[])], "v", true).is_ok());
        assert!(matches!(
            for_controller(&[], "v", false),
            Err(CsiError::MissingField("volume_capabilities"))
        ));
    }

    #[test]
    fn block_unknown_modes_and_odd_options_are_refused() {
        let block = VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeReaderOnly as i32,
            }),
        };
        let e = for_controller(&[block], "v", true)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("raw block access"));
        let e = for_node(Some(&cap(Mode::Unknown, &[])), "v", true)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("unknown access mode"));
        let e = for_node(
            Some(&cap(Mode::MultiNodeReaderOnly, &["context=x"])),
            "v",
            true,
        )
        .err()
        .map(|e| e.to_string());
        assert!(
            e.unwrap_or_default()
                .contains("mount option \"context=x\" is not supported")
        );
        let a = for_node(
            Some(&cap(
                Mode::MultiNodeReaderOnly,
                &["noexec,nosuid", "noexec"],
            )),
            "v",
            false,
        );
        assert_eq!(
            a.map(|a| a.flags).ok(),
            Some(vec!["noexec".into(), "nosuid".into()])
        );
        assert!(matches!(
            for_node(None, "v", false),
            Err(CsiError::MissingField(_))
        ));
    }
}
