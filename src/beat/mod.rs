//! The beat loop.
