//! What the message modes share: connecting both members of every room, one reader task and
//! one writer task per connection, open-loop schedules, waiting for the last messages, and
//! adding up what arrived.
//!
//! Every connection reads everything the server sends it and checks its room's stream (seq
//! gapless and in order, every message once). A member counts its own messages coming back
//! (`confirmed`: committed and fanned out) and the other member's arriving (`delivered`).
//! When sending is over, each member's `final_sent` is published; the run then waits until
//! every member has all of its own messages back and the other member has them too.
//!
//! - [`stats`]: the live counters and histograms, and the questions asked of them.
//! - [`schedule`]: the open-loop clock and the thread that keeps to it.
//! - [`connect`]: connecting every member, a bounded number at a time.
//! - [`frames`]: the frames and bodies the bench writes.
//! - [`reader`]: one connection's reader task, and what it checks.
//! - [`running`]: starting, draining and stopping a set of rooms.
//! - [`verdict`]: adding up what the readers found.

mod connect;
mod frames;
mod reader;
mod running;
mod schedule;
mod stats;
mod verdict;

pub use connect::{Live, connect_pairs};
pub use frames::{body, history_frame, send_frame};
pub use running::{Running, StartOptions, WindowPlan, start};
pub use schedule::{Clock, run_schedule};
pub use stats::{Hist, MemberStats, Totals, all_final, any_closed, drained, totals};
pub use verdict::Verdict;

/// Keeps the first few error texts.
fn note(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 {
        errors.push(e);
    }
}
