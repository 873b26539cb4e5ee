//! The order of a batch: which build waits for which, from what each needs
//! (its SRPM's BuildRequires) and what each makes (its packages' Provides,
//! learned on a worker), or from explicit groups (a chain). Pure: no I/O.

use kiln_core::srpm::compare_evr;
use std::cmp::Ordering;

/// One build of a batch as the ordering sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub package: String,
    /// `name`, `name >= 1.2`, rich dependencies (not matched here).
    pub requires: Vec<String>,
    /// What it makes: `name`, `name = [epoch:]version-release`.
    pub provides: Vec<String>,
}

/// What member `i` waits for: the member it waits for and what of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// The requirement the other member provides.
    pub what: String,
}

/// A requirement split as rpm writes it: name, operator, version.
fn split(dep: &str) -> (&str, Option<(&str, &str)>) {
    let mut parts = dep.split_whitespace();
    let name = parts.next().unwrap_or("");
    match (parts.next(), parts.next()) {
        (Some(op), Some(ver)) => (name, Some((op, ver))),
        _ => (name, None),
    }
}

/// Whether `provide` (`name` or `name = evr`) satisfies `require`.
pub fn satisfies(provide: &str, require: &str) -> bool {
    let (rname, rver) = split(require);
    if rname.starts_with('(') {
        // A rich dependency: left to dnf.
        return false;
    }
    let (pname, pver) = split(provide);
    if pname != rname {
        return false;
    }
    let (Some((op, want)), Some(("=", have))) = (rver, pver) else {
        // Unversioned on either side: rpm takes the name as enough.
        return true;
    };
    // A requirement without a release compares the version alone.
    let have = if want.contains('-') {
        have.to_string()
    } else {
        have.rsplit_once('-')
            .map(|(v, _)| v)
            .unwrap_or(have)
            .to_string()
    };
    let o = compare_evr(&have, want);
    match op {
        "=" | "==" => o == Ordering::Equal,
        ">=" => o != Ordering::Less,
        ">" => o == Ordering::Greater,
        "<=" => o != Ordering::Greater,
        "<" => o == Ordering::Less,
        _ => false,
    }
}

/// The edges of an automatic order: `i` waits for every other member that
/// provides one of its requirements.
pub fn edges(members: &[Member]) -> Vec<Edge> {
    let mut out = Vec::new();
    for (i, m) in members.iter().enumerate() {
        for (j, other) in members.iter().enumerate() {
            if i == j {
                continue;
            }
            if let Some(r) = m
                .requires
                .iter()
                .find(|r| other.provides.iter().any(|p| satisfies(p, r)))
            {
                out.push(Edge {
                    from: i,
                    to: j,
                    what: split(r).0.to_string(),
                });
            }
        }
    }
    out
}

/// The edges of a chain: every member of a group waits for every member of
/// the group before it.
pub fn chain_edges(groups: &[Vec<usize>]) -> Vec<Edge> {
    let mut out = Vec::new();
    for w in groups.windows(2) {
        for &from in &w[1] {
            for &to in &w[0] {
                out.push(Edge {
                    from,
                    to,
                    what: String::from("the previous group of the chain"),
                });
            }
        }
    }
    out
}

/// A cycle among the edges, as member indexes in order (the first repeated
/// at the end), if there is one.
pub fn find_cycle(n: usize, edges: &[Edge]) -> Option<Vec<usize>> {
    // 0: unseen, 1: on the path, 2: done.
    let mut mark = vec![0u8; n];
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        v: usize,
        edges: &[Edge],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[v] = 1;
        path.push(v);
        for e in edges.iter().filter(|e| e.from == v) {
            match mark[e.to] {
                1 => {
                    let start = path.iter().position(|&x| x == e.to).unwrap_or(0);
                    let mut c = path[start..].to_vec();
                    c.push(e.to);
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(e.to, edges, mark, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        mark[v] = 2;
        None
    }
    for v in 0..n {
        if mark[v] == 0 {
            if let Some(c) = visit(v, edges, &mut mark, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

/// A cycle as people read it: `a (needs X from b) → b (needs Y from a)`.
pub fn describe_cycle(cycle: &[usize], members: &[Member], edges: &[Edge]) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let what = edges
                .iter()
                .find(|e| e.from == w[0] && e.to == w[1])
                .map(|e| e.what.as_str())
                .unwrap_or("?");
            format!(
                "{} (needs {what} from {})",
                members[w[0]].package, members[w[1]].package
            )
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(package: &str, requires: &[&str], provides: &[&str]) -> Member {
        Member {
            package: package.into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            provides: provides.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn versions_are_compared_like_rpm() {
        assert!(satisfies("libgreet-devel = 2.0-1", "libgreet-devel >= 2"));
        assert!(satisfies("libgreet-devel = 2.0-1", "libgreet-devel"));
        assert!(satisfies("libgreet-devel", "libgreet-devel >= 9"));
        assert!(!satisfies("libgreet-devel = 1.9-3", "libgreet-devel >= 2"));
        assert!(satisfies("libgreet-devel = 2.0-1", "libgreet-devel = 2.0"));
        assert!(!satisfies(
            "libgreet-devel = 2.0-1",
            "libgreet-devel = 2.0-2"
        ));
        assert!(satisfies("foo = 1:1.0-1", "foo > 0:9"));
        assert!(!satisfies("libgreet = 2.0-1", "libgreet-devel"));
        assert!(!satisfies("a = 1-1", "(a or b)"));
    }

    #[test]
    fn a_build_waits_for_what_provides_its_requirements() {
        let ms = [
            m(
                "kf-greeter",
                &["gcc", "libgreet-devel >= 2"],
                &["kf-greeter = 1-1"],
            ),
            m(
                "kf-libgreet",
                &["gcc"],
                &["kf-libgreet = 2.0-1", "libgreet-devel = 2.0-1"],
            ),
            m("kf-other", &[], &["kf-other = 1-1"]),
        ];
        let e = edges(&ms);
        assert_eq!(
            e,
            [Edge {
                from: 0,
                to: 1,
                what: "libgreet-devel".into()
            }]
        );
        assert_eq!(find_cycle(3, &e), None);
    }

    #[test]
    fn a_cycle_is_found_and_named() {
        let ms = [
            m("a", &["libb"], &["liba"]),
            m("b", &["libc"], &["libb"]),
            m("c", &["liba"], &["libc"]),
            m("d", &[], &["libd"]),
        ];
        let e = edges(&ms);
        let c = find_cycle(ms.len(), &e).expect("a cycle");
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
        let text = describe_cycle(&c, &ms, &e);
        assert_eq!(
            text,
            "a (needs libb from b) → b (needs libc from c) → c (needs liba from a)"
        );
    }

    #[test]
    fn a_chain_waits_group_by_group() {
        let e = chain_edges(&[vec![0], vec![1, 2], vec![3]]);
        let pairs: Vec<(usize, usize)> = e.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(pairs, [(1, 0), (2, 0), (3, 1), (3, 2)]);
        assert_eq!(find_cycle(4, &e), None);
    }
}
