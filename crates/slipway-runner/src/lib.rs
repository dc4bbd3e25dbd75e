//! The Slipway runner (being written).

pub mod protocol;
