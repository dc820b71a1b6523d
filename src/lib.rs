pub mod graph;
pub mod provider;
pub mod spec;
