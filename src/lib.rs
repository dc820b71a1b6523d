pub mod engine;
pub mod graph;
pub mod plan;
pub mod provider;
pub mod spec;
pub mod state;
