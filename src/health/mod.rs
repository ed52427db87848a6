//! Is each backend fit for traffic? The [`state`] machine decides from check results (pure,
//! unit-tested); the [`checker`] thread produces those results, a HEAD to every backend each
//! `healthCheckInterval`, as in the seed article.

pub mod checker;
pub mod state;

pub use state::{Flip, HealthState};
