//! In-memory provider (being written).
