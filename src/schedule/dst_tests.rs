//! DST table tests: expected fire instants written out, per zone.
