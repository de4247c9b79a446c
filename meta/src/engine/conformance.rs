//! The conformance suite every engine passes (placeholder until implemented).
