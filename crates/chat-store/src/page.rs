//! How a history page maps to rows, shared by both backends.

/// The rows a history page selects: seqs strictly between the bounds, the `limit` closest to
/// `before` (newest first, then reversed) or to `after` (oldest first). Both backends build
/// their query from this, so they cut pages the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageBounds {
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub newest_first: bool,
    pub limit: i64,
}

impl PageBounds {
    /// `None` when the page is empty whatever is stored (an `after` beyond any seq).
    pub fn of(page: chat_domain::HistoryPage) -> Option<Self> {
        use chat_domain::HistoryPage;
        let limit = i64::from(chat_domain::history::clamp_history_limit(Some(
            page.limit(),
        )));
        Some(match page {
            HistoryPage::Latest { .. } => Self {
                after: None,
                before: None,
                newest_first: true,
                limit,
            },
            HistoryPage::Before { before, .. } => Self {
                after: None,
                before: Some(i64::from(before)),
                newest_first: true,
                limit,
            },
            HistoryPage::After { after, .. } => Self {
                after: Some(i64::try_from(after).ok()?),
                before: None,
                newest_first: false,
                limit,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_domain::{HistoryPage, Seq};

    #[test]
    fn pages_map_to_bounds() {
        let latest = PageBounds::of(HistoryPage::latest());
        assert_eq!(
            latest,
            Some(PageBounds {
                after: None,
                before: None,
                newest_first: true,
                limit: 300
            })
        );
        let before =
            Seq::new(11).map(|before| PageBounds::of(HistoryPage::Before { before, limit: 5 }));
        assert_eq!(
            before,
            Ok(Some(PageBounds {
                after: None,
                before: Some(11),
                newest_first: true,
                limit: 5
            }))
        );
        let after = PageBounds::of(HistoryPage::After {
            after: 300,
            limit: 300,
        });
        assert_eq!(
            after,
            Some(PageBounds {
                after: Some(300),
                before: None,
                newest_first: false,
                limit: 300
            })
        );
        assert_eq!(
            PageBounds::of(HistoryPage::After {
                after: u64::MAX,
                limit: 1
            }),
            None
        );
        let clamped = PageBounds::of(HistoryPage::Latest { limit: 10_000 }).map(|b| b.limit);
        assert_eq!(clamped, Some(300));
    }
}
