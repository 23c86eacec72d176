#![allow(clippy::unwrap_used, reason = "test code")]

use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

#[test]
fn keys_name_what_a_lenient_reader_could_take_them_for() {
    let cases: [(&str, IpFamily, &[&str]); 12] = [
        ("10.0.0.5", IpFamily::V4, &["10.0.0.5"]),
        (" 10.0.0.5\n", IpFamily::V4, &["10.0.0.5"]),
        ("10.0.0.5/24", IpFamily::V4, &["10.0.0.5"]),
        ("10.0.0.05", IpFamily::V4, &["10.0.0.5"]),
        ("10.0.0.010", IpFamily::V4, &["10.0.0.8", "10.0.0.10"]),
        ("10.0.0.0x10", IpFamily::V4, &["10.0.0.16"]),
        ("::ffff:10.0.0.5", IpFamily::V4, &["10.0.0.5"]),
        ("::10.0.0.5", IpFamily::V4, &["10.0.0.5"]),
        ("[FD00:0::5%eth0]", IpFamily::V6, &["fd00::5"]),
        ("fd00::5", IpFamily::V4, &[]),
        ("10.0.0.256", IpFamily::V4, &[]),
        ("nonsense", IpFamily::V4, &[]),
    ];
    for (key, family, want) in cases {
        let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
        assert_eq!(addresses_named(key, family), want, "{key:?}");
    }
    assert_eq!(canonical("10.0.0.5", IpFamily::V4), Some(ip("10.0.0.5")));
    assert_eq!(canonical("10.0.0.05", IpFamily::V4), None);
    assert_eq!(canonical("fd00:0::5", IpFamily::V6), None);
    assert_eq!(canonical("fd00::5", IpFamily::V4), None);
}

#[test]
fn the_index_finds_every_record_of_an_address_and_what_is_ambiguous() {
    let records = BTreeMap::from([
        ("10.0.0.5".to_owned(), PoolIPAllocation::held_by("ns/a", "ua")),
        ("10.0.0.05".to_owned(), PoolIPAllocation::held_by("ns/b", "ub")),
        ("10.0.0.010".to_owned(), PoolIPAllocation::held_by("ns/c", "uc")),
        ("fd00::1".to_owned(), PoolIPAllocation::held_by("ns/d", "ud")),
    ]);
    let index = RecordIndex::new(&records, IpFamily::V4);
    assert_eq!(
        index.keys_naming(&records, &ip("10.0.0.5")),
        ["10.0.0.5", "10.0.0.05"]
    );
    let occupied: Vec<IpAddr> = index.occupied(&records).iter().collect();
    assert_eq!(occupied, v4(&["10.0.0.5", "10.0.0.8", "10.0.0.10"]));
    assert_eq!(index.address_of_key("10.0.0.05"), Some(ip("10.0.0.5")));
    assert_eq!(index.address_of_key("10.0.0.010"), None);
    assert_eq!(
        index.ambiguous(&records),
        [(
            ip("10.0.0.5"),
            vec!["10.0.0.5".to_owned(), "10.0.0.05".to_owned()]
        )]
    );
    assert_eq!(index.foreign_keys(), ["10.0.0.010", "10.0.0.05", "fd00::1"]);
    // A removed key is no longer found.
    let mut fewer = records.clone();
    fewer.remove("10.0.0.05");
    assert_eq!(index.keys_naming(&fewer, &ip("10.0.0.5")), ["10.0.0.5"]);
    assert!(index.ambiguous(&fewer).is_empty());
}

proptest! {
    /// Whatever a key says, naming it costs no panic, and an address a key names canonically is
    /// among what it names.
    #[test]
    fn any_key_is_read_without_panicking(key in "\\PC{0,64}") {
        for family in [IpFamily::V4, IpFamily::V6] {
            let named = addresses_named(&key, family);
            if let Some(ip) = canonical(&key, family) {
                prop_assert!(named.contains(&ip));
            }
        }
    }
}
