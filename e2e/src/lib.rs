//! Harness of the CSI driver's end-to-end tests: the driver is exercised as Kubernetes
//! exercises it, against real processes and real mounts on this machine.
//!
//! - [`binary`]: the `mirrorfs` binary under test;
//! - [`process`]: child processes killed by pid, daemons found by the test's own paths;
//! - [`regions`]: source and mirror meta services (`mirrorfs meta serve`), volumes, data sets;
//! - [`driver`]: the `mirrorfs csi` process and CSI clients on its Unix socket;
//! - [`kube`]: the external-provisioner-like and kubelet-like callers, kubelet's path layout;
//! - [`pod`]: a pod-like process reading and attempting writes through a published volume;
//! - [`mounts`]: mountinfo and the sweeper that leaves no mount behind;
//! - [`cluster`]: all of it for one test, cleaned up on drop (also after a panic).

pub mod binary;
pub mod cluster;
pub mod driver;
pub mod kube;
pub mod mounts;
pub mod pod;
pub mod process;
pub mod regions;
