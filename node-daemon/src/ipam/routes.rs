//! The routes that go with a pod's addresses, with upstream's precedence (reference 4.7): per
//! interface a default route through the pool's gateway (unless the interface asks for a clean
//! gateway), then the pool's `spec.routes`, then the pod's `ipam.spidernet.io/routes`, each attached
//! to the interface whose address's subnet contains its gateway.

use ipnet::IpNet;
use spiderpool_agent_api::Route;

use super::annotations::RouteItem;

/// One allocated address with what its pool says about routing.
#[derive(Debug, Clone)]
pub struct Allocated<'a> {
    /// Interface.
    pub nic: &'a str,
    /// The pool's subnet.
    pub subnet: IpNet,
    /// The pool's gateway.
    pub gateway: Option<&'a str>,
    /// The pool's routes.
    pub pool_routes: &'a [spiderpool_schema::common::Route],
    /// No default route on this interface.
    pub clean_gateway: bool,
}

/// The routes of every interface, default routes first. Annotation routes whose gateway is in no
/// allocated subnet are returned separately so the caller can log them (upstream drops them with a
/// warning).
pub fn routes(allocated: &[Allocated<'_>], extra: &[RouteItem]) -> (Vec<Route>, Vec<RouteItem>) {
    let mut out = Vec::new();
    for a in allocated {
        if let Some(gw) = a.gateway.filter(|g| !g.is_empty())
            && !a.clean_gateway
        {
            let dst = if a.subnet.addr().is_ipv4() {
                "0.0.0.0/0"
            } else {
                "::/0"
            };
            out.push(Route {
                if_name: a.nic.to_owned(),
                dst: dst.to_owned(),
                gw: gw.to_owned(),
            });
        }
    }
    for a in allocated {
        for r in a.pool_routes {
            out.push(Route {
                if_name: a.nic.to_owned(),
                dst: r.dst.clone(),
                gw: r.gw.clone(),
            });
        }
    }
    let mut unmatched = Vec::new();
    for r in extra {
        let owner = r.gw.parse().ok().and_then(|gw| {
            allocated
                .iter()
                .find(|a| spiderpool_ipmath::network_contains(&a.subnet, &gw))
        });
        match owner {
            Some(a) => out.push(Route {
                if_name: a.nic.to_owned(),
                dst: r.dst.clone(),
                gw: r.gw.clone(),
            }),
            None => unmatched.push(r.clone()),
        }
    }
    (out, unmatched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spiderpool_schema::common::Route as PoolRoute;

    #[test]
    fn precedence_and_attachment_by_gateway_subnet() {
        let pool_routes = vec![PoolRoute {
            dst: "10.9.0.0/16".into(),
            gw: "10.6.0.254".into(),
        }];
        let allocated = [
            Allocated {
                nic: "eth0",
                subnet: "10.6.0.0/16".parse().unwrap(),
                gateway: Some("10.6.0.1"),
                pool_routes: &pool_routes,
                clean_gateway: false,
            },
            Allocated {
                nic: "net1",
                subnet: "fd00:6::/64".parse().unwrap(),
                gateway: Some("fd00:6::1"),
                pool_routes: &[],
                clean_gateway: true,
            },
        ];
        let extra = vec![
            RouteItem {
                dst: "fd00:99::/64".into(),
                gw: "fd00:6::fe".into(),
            },
            RouteItem {
                dst: "192.168.0.0/16".into(),
                gw: "172.16.0.1".into(),
            },
        ];
        let (routes, unmatched) = routes(&allocated, &extra);
        let got: Vec<(&str, &str, &str)> = routes
            .iter()
            .map(|r| (r.if_name.as_str(), r.dst.as_str(), r.gw.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("eth0", "0.0.0.0/0", "10.6.0.1"),
                ("eth0", "10.9.0.0/16", "10.6.0.254"),
                ("net1", "fd00:99::/64", "fd00:6::fe"),
            ]
        );
        assert_eq!(unmatched, [extra[1].clone()]);
    }
}
