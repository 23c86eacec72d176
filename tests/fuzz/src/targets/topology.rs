//! Topology YAML as a network engineer commits it: `spiderctl render` (parse every document,
//! check, compile, print every object) and `spiderctl validate` on the input as standard input.

use spiderpool_operator::cli::run_with;

use super::{Shape, Target};

pub const TARGET: Target = Target {
    name: "topology",
    run,
    shape: Shape::Yaml,
    dictionary: &[
        b"\n---\n",
        b"apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderNetwork\n",
        b"racks:",
        b"subnets:",
        b"networks:",
        b"bindings:",
        b"vlan:",
        b"bond:",
        b"&a ",
        b"*a",
        b"!!binary ",
        b"- ",
        b": ",
        b"{",
        b"[",
    ],
};

fn run(data: &[u8]) -> String {
    let mut out = Vec::new();
    for command in ["render", "validate"] {
        let mut stdin = data;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let code = run_with(
            ["spiderctl", command, "-f", "-"],
            &mut stdin,
            &mut stdout,
            &mut stderr,
        );
        let first = String::from_utf8_lossy(&stderr)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>();
        out.push(format!("{command}: {code:?} {first}"));
    }
    out.join("; ")
}
