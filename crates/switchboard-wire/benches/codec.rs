//! Criterion benchmarks of the frame codec (filled in with the wire tests).
fn main() {}
