//! The pure heart of matchchat: what a message, a room and a seen receipt are, the rules
//! they obey, and the frames spoken on the wire.
//!
//! Nothing here does I/O, reads a clock or needs an async runtime, so any Rust service (the
//! server, `chat-bench`, a host app's back end) can import it and agree with the server on
//! every rule. Callers pass the current time in.

pub mod body;
pub mod clock;
pub mod error;
pub mod history;
pub mod ids;
pub mod js;
pub mod limits;
pub mod message;
pub mod presence;
pub mod protocol;
pub mod room;
pub mod seen;
pub mod timestamp;
pub mod unsend;

pub use body::Body;
pub use clock::{Clock, FixedClock};
pub use error::DomainError;
pub use history::HistoryPage;
pub use ids::{ClientMsgId, Req, RoomId, Seq, UserId};
pub use limits::{HISTORY_WINDOW, MAX_BODY_CHARS, MAX_ID_CHARS, ROOMS_PAGE};
pub use message::{Message, NewMessage};
pub use presence::Presence;
pub use room::{Members, Room, RoomSummary, RoomsCursor, RoomsPage};
pub use seen::{SeenOutcome, Watermark};
pub use timestamp::Timestamp;
pub use unsend::{Deleter, Unsend};
