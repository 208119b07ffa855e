//! Socket options for every accepted TCP connection.
//!
//! `TCP_USER_TIMEOUT` makes the kernel drop a connection whose sent data stays
//! unacknowledged, or unsent behind a zero window, for longer than the write timeout (Linux
//! applies it to zero-window probes since 5.11). A WebSocket whose client stopped reading is
//! closed by its task after the write timeout (`ws/outbox.rs`); this makes sure the socket and
//! the HTTP dispatcher's buffers behind it go too, instead of living as long as the peer's
//! kernel answers probes (issue 8, D1). Where the option does not exist the server still runs
//! and says so once.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::Extensions;

/// The `on_connect` hook of the HTTP server.
pub fn on_connect(write_timeout: Duration) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync {
    let warned = AtomicBool::new(false);
    move |conn, _| {
        let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        if let Err(error) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(write_timeout))
            && !warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%error, "TCP_USER_TIMEOUT not available: a peer that stops reading is closed by the server but its socket may linger");
        }
    }
}
