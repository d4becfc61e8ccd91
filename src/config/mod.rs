//! Schedule files and beatd.toml.
