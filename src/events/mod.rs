//! What a core's tasks wait on, and where the core sleeps: the core's own
//! io_uring (`ring`: the event ring, its driver and its watches), timers
//! on it (`timer`), blocking work whose answer comes back through it
//! (`offcore`), the TCP streams and listeners that wait there (`stream`,
//! `listener`), and stop signals (`stop`). Apart from the runtime, which
//! owns a ring per core and fires the signals, so that the relay, UDP and
//! sessions that wait on them do not depend on the runtime.

mod datagram;
mod listener;
pub mod offcore;
pub mod ring;
mod stop;
mod stream;
pub mod timer;

pub use datagram::DatagramWait;
pub use listener::Listener;
pub use offcore::{blocking, blocking_on, Pool};
pub use ring::{counted, root, spawn, EventRing, Watch};
pub use stop::{ShedReason, Stop, StopSignal};
pub use stream::Stream;
pub use timer::{sleep, Timer};
