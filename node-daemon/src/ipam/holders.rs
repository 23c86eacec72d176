//! Which addresses of one pool each pod holds, as a node knows it: what the pool records for pods,
//! plus what the node handed out and has not recorded yet, minus what pods gave back and the pool
//! still records for them.
//!
//! A pod nearly always holds one address of a pool, but it can hold more for a while: a pod that
//! gives its address back and asks again at once (an ADD that finds a stale endpoint under the
//! pod's name when it writes its own gives back what it took, then allocates again) holds its new
//! address before its release of the old one is written, and an agent restarted between the two
//! finds both recorded for it. A repeated ADD is checked against what the node knows: knowing one
//! address per pod, it would take the pod's new address for one the pod gave back.

use std::collections::HashMap;
use std::net::IpAddr;

/// The addresses one pod holds: one, or (rarely) several, in the order they were learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    One(IpAddr),
    Several(Vec<IpAddr>),
}

/// Pod UID to the addresses of one pool it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    by_pod: HashMap<String, Held>,
}

impl Holders {
    /// Pod `uid` holds `ip` (no change if it was known already).
    pub fn insert(&mut self, uid: &str, ip: IpAddr) {
        let Some(held) = self.by_pod.get_mut(uid) else {
            self.by_pod.insert(uid.to_owned(), Held::One(ip));
            return;
        };
        match held {
            Held::One(first) if *first == ip => {}
            Held::One(first) => {
                let first = *first;
                *held = Held::Several(vec![first, ip]);
            }
            Held::Several(all) => {
                if !all.contains(&ip) {
                    all.push(ip);
                }
            }
        }
    }

    /// Pod `uid` no longer holds `ip`.
    pub fn remove(&mut self, uid: &str, ip: IpAddr) {
        let Some(held) = self.by_pod.get_mut(uid) else {
            return;
        };
        match held {
            Held::One(only) if *only == ip => {
                self.by_pod.remove(uid);
            }
            Held::One(_) => {}
            Held::Several(all) => {
                all.retain(|a| *a != ip);
                if let [only] = all.as_slice() {
                    *held = Held::One(*only);
                }
            }
        }
    }

    /// Whether pod `uid` holds `ip`.
    pub fn holds(&self, uid: &str, ip: IpAddr) -> bool {
        match self.by_pod.get(uid) {
            Some(Held::One(only)) => *only == ip,
            Some(Held::Several(all)) => all.contains(&ip),
            None => false,
        }
    }

    /// Whether pod `uid` holds any address.
    pub fn holds_any(&self, uid: &str) -> bool {
        self.by_pod.contains_key(uid)
    }

    /// The address pod `uid` holds, when it holds exactly one.
    pub fn only(&self, uid: &str) -> Option<IpAddr> {
        match self.by_pod.get(uid) {
            Some(Held::One(only)) => Some(*only),
            _ => None,
        }
    }

    /// Forgets every pod.
    pub fn clear(&mut self) {
        self.by_pod.clear();
    }
}

impl FromIterator<(String, IpAddr)> for Holders {
    fn from_iter<I: IntoIterator<Item = (String, IpAddr)>>(iter: I) -> Self {
        let mut holders = Holders::default();
        for (uid, ip) in iter {
            holders.insert(&uid, ip);
        }
        holders
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pod_may_hold_several_addresses_and_give_them_back_one_by_one() {
        let mut holders = Holders::default();
        holders.insert("a", ip("10.0.0.1"));
        holders.insert("a", ip("10.0.0.1"));
        assert_eq!(holders.only("a"), Some(ip("10.0.0.1")));
        holders.insert("a", ip("10.0.0.2"));
        assert!(holders.holds("a", ip("10.0.0.1")) && holders.holds("a", ip("10.0.0.2")));
        assert_eq!(holders.only("a"), None, "two addresses: no single answer");
        holders.remove("a", ip("10.0.0.1"));
        assert_eq!(holders.only("a"), Some(ip("10.0.0.2")));
        holders.remove("a", ip("10.0.0.9"));
        assert!(holders.holds_any("a"));
        holders.remove("a", ip("10.0.0.2"));
        assert!(!holders.holds_any("a"));
        assert_eq!(holders, Holders::default());
    }
}
