//! The protocol between loadgen's clients and its targets (`loadgen serve`
//! or the targets loadgen runs itself). See `target` for what each mode does.

pub const MODE_HELLO: u8 = b'H';
pub const MODE_ECHO: u8 = b'E';
pub const MODE_SINK: u8 = b'S';
pub const MODE_SOURCE: u8 = b'R';
pub const MODE_DUPLEX: u8 = b'D';
/// The answer to `H`.
pub const HELLO_REPLY: &[u8; 4] = b"LGT1";
/// Set in the last acknowledgement of a sink or duplex connection.
pub const ACK_FINAL: u64 = 1 << 63;
/// Duplex data unit: an 8-byte header, then filler.
pub const UNIT: usize = 64 * 1024;
