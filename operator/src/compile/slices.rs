//! Rendering on several threads without the output depending on how many: the work is cut into
//! consecutive slices, one per thread, and the results are joined in slice order.

use std::ops::Range;

/// Runs `render` on `threads` consecutive slices of `0..len` at once (the first on the calling thread)
/// and concatenates what they return in slice order. A panic in a slice is resumed on the caller.
pub(super) fn in_slices<T: Send>(
    threads: usize,
    len: usize,
    render: impl Fn(Range<usize>) -> Vec<T> + Sync,
) -> Vec<T> {
    let per_slice = len.div_ceil(threads.max(1)).max(1);
    let mut slices = (0..len)
        .step_by(per_slice)
        .map(|first| first..(first + per_slice).min(len));
    let Some(first) = slices.next() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        let render = &render;
        let others: Vec<_> = slices.map(|slice| scope.spawn(move || render(slice))).collect();
        let mut out = render(first);
        for other in others {
            out.extend(
                other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::in_slices;

    #[test]
    fn slices_join_in_order_for_any_thread_count() {
        let expected: Vec<usize> = (0..10).collect();
        for threads in [0, 1, 2, 3, 4, 9, 10, 11, 64] {
            assert_eq!(
                in_slices(threads, 10, Iterator::collect),
                expected,
                "{threads} threads"
            );
        }
        assert!(in_slices(4, 0, Iterator::collect::<Vec<usize>>).is_empty());
    }
}
