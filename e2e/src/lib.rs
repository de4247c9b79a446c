//! Harness of the CSI driver's end-to-end tests.
