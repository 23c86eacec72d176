//! Facts of a pool the allocator reads from its spec and annotations.

use std::time::Duration;

use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderIPPool;

/// Annotation on a SpiderIPPool: how many seconds an address released from it cools down before it
/// is handed out again (this daemon's `--release-cooldown-ms` otherwise), from 0 to
/// [`MAX_RELEASE_COOLDOWN`].
pub const ANNO_RELEASE_COOLDOWN: &str = "spiderpool.spidernet.io/release-cooldown-seconds";
/// The longest cooldown a pool may ask for.
pub const MAX_RELEASE_COOLDOWN: Duration = Duration::from_secs(300);

/// The pool's release cooldown: its annotation if it has a valid one, else `default`; `Err` says what
/// is wrong with the annotation (the default applies).
pub fn release_cooldown(pool: &SpiderIPPool, default: Duration) -> Result<Duration, String> {
    let Some(text) = pool
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNO_RELEASE_COOLDOWN))
    else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(seconds) if Duration::from_secs(seconds) <= MAX_RELEASE_COOLDOWN => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(format!(
            "annotation {ANNO_RELEASE_COOLDOWN}: {text:?} is not a number of seconds from 0 to {}",
            MAX_RELEASE_COOLDOWN.as_secs()
        )),
    }
}

/// The pool's IP family ([`spiderpool_schema::SpiderIPPoolSpec::family`]).
pub fn family(pool: &SpiderIPPool) -> Option<IpFamily> {
    pool.spec.family()
}

#[cfg(test)]
mod tests {
    use spiderpool_schema::SpiderIPPoolSpec;

    use super::*;

    #[test]
    fn the_cooldown_annotation_is_read_within_bounds() {
        let mut pool = SpiderIPPool::new("p", SpiderIPPoolSpec::default());
        let default = Duration::from_secs(5);
        assert_eq!(release_cooldown(&pool, default), Ok(default));
        for (text, want) in [
            ("0", Ok(0)),
            (" 30 ", Ok(30)),
            ("300", Ok(300)),
            ("301", Err(())),
            ("-1", Err(())),
            ("5s", Err(())),
        ] {
            pool.metadata.annotations = Some([(ANNO_RELEASE_COOLDOWN.to_owned(), text.to_owned())].into());
            let got = release_cooldown(&pool, default)
                .map(|d| d.as_secs())
                .map_err(|_| ());
            assert_eq!(got, want, "{text}");
        }
    }
}
