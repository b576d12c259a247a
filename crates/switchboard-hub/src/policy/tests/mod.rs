//! Tests of the permission policy.
