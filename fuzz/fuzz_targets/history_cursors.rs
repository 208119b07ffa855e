//! Arbitrary history cursors, as a client could send them, through `Seq::new` and
//! `HistoryPage::from_cursors`: nothing panics, both cursors at once is refused, and the
//! limit is clamped to 1..=HISTORY_WINDOW (300), no limit meaning the full window.

#![no_main]

use arbitrary::Arbitrary;
use chat_domain::history::clamp_history_limit;
use chat_domain::{DomainError, HISTORY_WINDOW, HistoryPage, Seq};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Cursors {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

fuzz_target!(|input: Cursors| {
    let Cursors {
        before,
        after,
        limit,
    } = input;

    let before = match before.map(Seq::new) {
        None => None,
        Some(Ok(seq)) => {
            let n = seq.get();
            assert!((1..=i64::MAX as u64).contains(&n));
            assert_eq!(Seq::try_from(i64::from(seq)), Ok(seq));
            assert_eq!(seq.next().get(), n + 1);
            Some(seq)
        }
        Some(Err(e)) => {
            assert_eq!(e, DomainError::InvalidSeq);
            let n = before.unwrap_or_default();
            assert!(n == 0 || n > i64::MAX as u64, "{n} refused");
            return;
        }
    };

    let want = match limit {
        None => HISTORY_WINDOW,
        Some(0) => 1,
        Some(l) if l > HISTORY_WINDOW => HISTORY_WINDOW,
        Some(l) => l,
    };
    assert_eq!(clamp_history_limit(limit), want);

    match (
        HistoryPage::from_cursors(before, after, limit),
        before,
        after,
    ) {
        (Err(e), Some(_), Some(_)) => assert_eq!(e, DomainError::ConflictingCursors),
        (Ok(page), b, a) => {
            assert!((1..=HISTORY_WINDOW).contains(&page.limit()));
            assert_eq!(page.limit(), want);
            let expected = match (b, a) {
                (Some(before), None) => HistoryPage::Before {
                    before,
                    limit: want,
                },
                (None, Some(after)) => HistoryPage::After { after, limit: want },
                (None, None) => HistoryPage::Latest { limit: want },
                (Some(_), Some(_)) => panic!("both cursors accepted: {page:?}"),
            };
            assert_eq!(page, expected);
        }
        (Err(e), b, a) => panic!("{e:?} for before={b:?} after={a:?} limit={limit:?}"),
    }
});
