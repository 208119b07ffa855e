//! History pages. A page holds at most [`HISTORY_WINDOW`] messages and is always returned
//! oldest first, whichever way it was cut.

use crate::error::DomainError;
use crate::ids::Seq;
use crate::limits::HISTORY_WINDOW;

/// Which page of a room's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest `limit` messages.
    Latest { limit: u32 },
    /// The newest `limit` messages with seq < `before` (scrolling back).
    Before { before: Seq, limit: u32 },
    /// The oldest `limit` messages with seq > `after` (catch-up after a reconnect; `after` = 0
    /// reads from the start).
    After { after: u64, limit: u32 },
}

impl HistoryPage {
    /// Builds a page from the wire's optional cursors. Both cursors at once is an error.
    pub fn from_cursors(
        before: Option<Seq>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Self, DomainError> {
        let limit = clamp_history_limit(limit);
        match (before, after) {
            (Some(_), Some(_)) => Err(DomainError::ConflictingCursors),
            (Some(before), None) => Ok(Self::Before { before, limit }),
            (None, Some(after)) => Ok(Self::After { after, limit }),
            (None, None) => Ok(Self::Latest { limit }),
        }
    }

    pub fn limit(&self) -> u32 {
        match *self {
            Self::Latest { limit } | Self::Before { limit, .. } | Self::After { limit, .. } => {
                limit
            }
        }
    }

    /// The latest full window: what a page shows on open.
    pub fn latest() -> Self {
        Self::Latest {
            limit: HISTORY_WINDOW,
        }
    }
}

/// Clamps a requested page size to `1..=HISTORY_WINDOW`; no size means the full window.
pub fn clamp_history_limit(requested: Option<u32>) -> u32 {
    requested.unwrap_or(HISTORY_WINDOW).clamp(1, HISTORY_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_limit_is_clamped_to_the_window() {
        assert_eq!(clamp_history_limit(None), 300);
        assert_eq!(clamp_history_limit(Some(0)), 1);
        assert_eq!(clamp_history_limit(Some(50)), 50);
        assert_eq!(clamp_history_limit(Some(300)), 300);
        assert_eq!(clamp_history_limit(Some(301)), 300);
        assert_eq!(clamp_history_limit(Some(u32::MAX)), 300);
    }

    #[test]
    fn cursors() {
        let five = Seq::new(5).unwrap();
        assert_eq!(
            HistoryPage::from_cursors(None, None, None),
            Ok(HistoryPage::latest())
        );
        assert_eq!(
            HistoryPage::from_cursors(Some(five), None, Some(1000)),
            Ok(HistoryPage::Before {
                before: five,
                limit: 300
            })
        );
        assert_eq!(
            HistoryPage::from_cursors(None, Some(0), Some(10)),
            Ok(HistoryPage::After {
                after: 0,
                limit: 10
            })
        );
        assert_eq!(
            HistoryPage::from_cursors(Some(five), Some(1), None),
            Err(DomainError::ConflictingCursors)
        );
    }
}
