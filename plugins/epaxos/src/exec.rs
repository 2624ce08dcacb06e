//! Tarjan's strongly connected components, iteratively (a Wasm stack is
//! small and dependency chains can be long).

use std::collections::BTreeMap;

/// The outcome of one walk from a start node.
#[derive(Debug, PartialEq, Eq)]
pub enum Walk<N> {
    /// Components in execution order: every component comes after all the
    /// components it depends on.
    Components(Vec<Vec<N>>),
    /// A node reachable from the start cannot be executed yet (it is not
    /// committed, or not known at all).
    Blocked(N),
}

/// Walks the dependency graph from `start`. `edges(v)` lists the not yet
/// executed nodes `v` depends on, or `Err(w)` when some dependency `w` is
/// not committed.
pub fn components<N, F>(start: N, mut edges: F) -> Walk<N>
where
    N: Copy + Ord,
    F: FnMut(N) -> Result<Vec<N>, N>,
{
    struct Mark {
        index: usize,
        low: usize,
        on_stack: bool,
    }
    let mut marks: BTreeMap<N, Mark> = BTreeMap::new();
    let mut stack: Vec<N> = Vec::new();
    let mut frames: Vec<(N, Vec<N>, usize)> = Vec::new();
    let mut out: Vec<Vec<N>> = Vec::new();
    let mut next_index = 0;

    let first = match edges(start) {
        Ok(first) => first,
        Err(blocked) => return Walk::Blocked(blocked),
    };
    marks.insert(
        start,
        Mark {
            index: 0,
            low: 0,
            on_stack: true,
        },
    );
    next_index += 1;
    stack.push(start);
    frames.push((start, first, 0));

    while let Some((node, successors, position)) = frames.last_mut() {
        let node = *node;
        if let Some(&next) = successors.get(*position) {
            *position += 1;
            match marks.get(&next) {
                None => {
                    let next_edges = match edges(next) {
                        Ok(next_edges) => next_edges,
                        Err(blocked) => return Walk::Blocked(blocked),
                    };
                    marks.insert(
                        next,
                        Mark {
                            index: next_index,
                            low: next_index,
                            on_stack: true,
                        },
                    );
                    next_index += 1;
                    stack.push(next);
                    frames.push((next, next_edges, 0));
                }
                Some(mark) if mark.on_stack => {
                    let index = mark.index;
                    if let Some(current) = marks.get_mut(&node) {
                        current.low = current.low.min(index);
                    }
                }
                Some(_) => {}
            }
            continue;
        }
        frames.pop();
        let (index, low) = match marks.get(&node) {
            Some(mark) => (mark.index, mark.low),
            None => unreachable!("every node on a frame is marked"),
        };
        if low == index {
            let mut component = Vec::new();
            while let Some(member) = stack.pop() {
                if let Some(mark) = marks.get_mut(&member) {
                    mark.on_stack = false;
                }
                component.push(member);
                if member == node {
                    break;
                }
            }
            out.push(component);
        }
        if let Some((parent, _, _)) = frames.last() {
            let parent = *parent;
            if let Some(mark) = marks.get_mut(&parent) {
                mark.low = mark.low.min(low);
            }
        }
    }
    Walk::Components(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(u32, u32)]) -> impl FnMut(u32) -> Result<Vec<u32>, u32> + '_ {
        move |v| {
            Ok(edges
                .iter()
                .filter(|(from, _)| *from == v)
                .map(|(_, to)| *to)
                .collect())
        }
    }

    fn sorted(walk: Walk<u32>) -> Vec<Vec<u32>> {
        match walk {
            Walk::Components(components) => components
                .into_iter()
                .map(|mut c| {
                    c.sort();
                    c
                })
                .collect(),
            Walk::Blocked(node) => panic!("blocked on {node}"),
        }
    }

    #[test]
    fn dependencies_come_first_and_cycles_form_one_component() {
        // 1 -> 2 -> 3 -> 2, 3 -> 4
        let edges = [(1, 2), (2, 3), (3, 2), (3, 4)];
        assert_eq!(
            sorted(components(1, graph(&edges))),
            vec![vec![4], vec![2, 3], vec![1]]
        );
    }

    #[test]
    fn a_missing_dependency_blocks_the_walk() {
        let walk = components(1u32, |v| if v == 1 { Ok(vec![2]) } else { Err(9) });
        assert_eq!(walk, Walk::Blocked(9));
    }

    #[test]
    fn long_chains_do_not_recurse() {
        let walk = components(0u32, |v| Ok(if v < 100_000 { vec![v + 1] } else { vec![] }));
        match walk {
            Walk::Components(components) => assert_eq!(components.len(), 100_001),
            Walk::Blocked(_) => panic!("blocked"),
        }
    }
}
