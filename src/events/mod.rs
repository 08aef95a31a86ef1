//! What a core's tasks wait on besides glommio: readiness from the core's
//! own io_uring (`ring`: the event ring and its watches), and stop signals
//! (`stop`). Apart from the runtime, which owns a ring per core and fires
//! the signals, so that the relay, UDP and sessions that wait on them do
//! not depend on the runtime.

pub mod ring;
mod stop;

pub use ring::{EventRing, Watch};
pub use stop::{ShedReason, Stop, StopSignal};
