//! Pipeline files: reading, checking and compiling them. Pure: no IO, no async.
//!
//! A pipeline file goes through four stages, each its own module:
//!
//! 1. [`envsubst`] substitutes `${...}` in the raw text with the build's variables
//!    ([`context::BuildContext::variables`]), with drone/envsubst's exact semantics.
//! 2. [`yaml`] (the `slipway-yaml` crate) loads the text into a tree that keeps line and column of every node.
//! 3. [`parse`] reads the tree into one [`model::Config`] for both Drone formats: 1.x
//!    (`kind: pipeline` documents) and the legacy 0.8 `pipeline:` map. Unknown keys are
//!    warnings, malformed values errors, each a [`Diagnostic`] with line and column.
//! 4. [`compile`] validates names and dependency graphs and produces a [`plan::Plan`]:
//!    conditions evaluated ([`conditions`], patterns by [`glob`]), environments resolved,
//!    dependencies explicit.
//!
//! Invariants: nothing here panics on any input (there is a property test that feeds it
//! arbitrary text); every error names a position in the file the user wrote, because
//! substitution never adds or removes lines; and a plan is only produced from a file
//! with no errors.

pub mod compile;
pub mod conditions;
pub mod context;
pub mod diagnostic;
pub mod envsubst;
pub mod glob;
pub mod model;
pub mod parse;
pub mod plan;
/// The marked YAML tree, from `slipway-yaml` (kept under this name for spec's users).
pub use slipway_yaml as yaml;

pub use compile::{Compiled, compile, lint};
pub use context::{BuildContext, BuildEvent};
pub use diagnostic::{Diagnostic, Severity};
pub use plan::Plan;
