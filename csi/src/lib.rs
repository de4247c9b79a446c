//! The mirror-aware CSI driver (`csi.mirrorfs.io`).
