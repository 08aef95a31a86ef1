//! What a core's tasks wait on besides glommio: readiness from the core's
//! own io_uring (`ring`: the event ring and its watches), the TCP streams
//! and listeners that wait there (`stream`, `listener`), and stop signals
//! (`stop`). Apart from the runtime, which owns a ring per core and fires
//! the signals, so that the relay, UDP and sessions that wait on them do
//! not depend on the runtime.

mod datagram;
mod listener;
pub mod ring;
mod stop;
mod stream;

pub use datagram::DatagramWait;
pub use listener::Listener;
pub use ring::{wake_again, yield_now, EventRing, Watch};
pub use stop::{ShedReason, Stop, StopSignal};
pub use stream::Stream;
