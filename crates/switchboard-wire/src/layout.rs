//! The byte layout every encoder of this crate shares: the length prefix
//! before each frame and protobuf varints written into a stack buffer.
//! Its own module so that the codec and the hand encoders
//! ([`crate::deliver`]) both use it without naming each other.

/// Length of the big-endian length prefix before every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Writes `v` as a protobuf varint into `buf` at `at`; returns the
/// position after it. For encoders that assemble a frame's fixed fields in
/// a stack buffer (`buf` must have room for 10 bytes at `at`).
#[inline]
pub fn put_varint(buf: &mut [u8], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        buf[at] = (v as u8) | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}
