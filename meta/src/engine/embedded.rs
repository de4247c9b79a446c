//! The embedded engine on redb (placeholder until implemented).
