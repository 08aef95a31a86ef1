//! What one step of an engine did: the outcomes the tunnel's directions
//! act on, whichever engine (copy, splice, sealed) took the step. Apart
//! from `tunnel`, so that the engines and the tunnel that drives them do
//! not import each other.

/// Outcome of writing out what a direction holds.
pub(super) enum Flush {
    Moved(usize),
    Empty,
    Blocked,
}

/// Outcome of reading from the source.
pub(super) enum Fill {
    /// This many bytes were read.
    Data(usize),
    Eof,
    Blocked,
    /// The splice engine cannot run here; copy instead.
    NoPipe,
}
